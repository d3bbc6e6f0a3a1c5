package api_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Bodies are matched exactly: Go's decoder would take "Name" for "name", keep the last of two "name"s,
// decode null into an untouched struct and replace invalid UTF-8 with U+FFFD. Each is a 400 naming what
// is wrong.
func TestAPIStrictJSONBodies(t *testing.T) {
	const restore = "/v1/volumes/v1/restore"
	const snapshots = "/v1/volumes/v1/snapshots"
	register := `"owner_id": "alice", "hypervisor_id": "hv1", "storage": {"type": "file", "path": "/v/a.qcow2"}`
	for _, c := range []struct {
		name, method, target, token, body, message string
	}{
		{"case-folded key", "POST", snapshots, "alice-token", `{"Name": "nightly"}`, `Name: unknown field`},
		{"case-folded key in a restore", "POST", restore, "panel-secret", `{"snapshot_id": "s1", "MODE": "in_place"}`,
			`MODE: unknown field`},
		{"case-folded nested key", "PUT", "/v1/volumes/v1", "panel-secret",
			`{"name": "a", "owner_id": "alice", "hypervisor_id": "hv1", "storage": {"Type": "file", "path": "/v/a"}}`,
			`storage.Type: unknown field`},
		{"unknown field", "POST", snapshots, "alice-token", `{"colour": "blue"}`, `colour: unknown field`},
		{"duplicate key", "POST", snapshots, "alice-token", `{"name": "a", "name": "b"}`, `name: given more than once`},
		{"duplicate key in a restore", "POST", restore, "panel-secret",
			`{"snapshot_id": "s1", "mode": "new_volume", "mode": "in_place", "confirm": "web-data"}`,
			`mode: given more than once`},
		{"duplicate nested key", "PUT", "/v1/volumes/v1", "panel-secret",
			`{"name": "a", "owner_id": "alice", "hypervisor_id": "hv1", "storage": {"type": "file", "type": "rbd"}}`,
			`storage.type: given more than once`},
		{"null body", "PUT", "/v1/volumes/v1", "panel-secret", `null`, `body: must be a JSON object`},
		{"null body where every field is optional", "POST", snapshots, "alice-token", ` null `,
			`body: must be a JSON object`},
		{"array body", "POST", snapshots, "alice-token", `[]`, `body: must be a JSON object`},
		{"string body", "POST", restore, "panel-secret", `"in_place"`, `body: must be a JSON object`},
		{"invalid UTF-8", "POST", snapshots, "alice-token", "{\"name\": \"caf\xe9\"}", `body: must be valid UTF-8`},
		{"invalid UTF-8 in a key", "POST", snapshots, "alice-token", "{\"n\xffme\": \"x\"}", `body: must be valid UTF-8`},
		{"NUL in a name", "POST", snapshots, "alice-token", `{"name": "a\u0000b"}`, ""},
		{"newline in a name", "POST", snapshots, "alice-token", `{"name": "a\nb"}`, ""},
		{"carriage return in a name", "POST", snapshots, "alice-token", `{"name": "a\rb"}`, ""},
		{"tab in a name", "POST", snapshots, "alice-token", `{"name": "a\tb"}`, ""},
		{"DEL in a name", "POST", snapshots, "alice-token", `{"name": "a\u007fb"}`, ""},
		{"C1 control in a name", "POST", snapshots, "alice-token", `{"name": "a` + "\u0085" + `b"}`, ""},
		{"RTL override in a name", "POST", snapshots, "alice-token", `{"name": "invoice` + "\u202e" + `fdp.exe"}`, ""},
		{"LTR embedding in a name", "POST", snapshots, "alice-token", `{"name": "\u202aa"}`, ""},
		{"bidi isolate in a name", "POST", snapshots, "alice-token", `{"name": "a` + "\u2067" + `b"}`, ""},
		{"pop directional isolate in a name", "POST", snapshots, "alice-token", `{"name": "a\u2069"}`, ""},
		{"zero-width space in a name", "POST", snapshots, "alice-token", `{"name": "a` + "\u200b" + `b"}`, ""},
		{"byte order mark in a name", "POST", snapshots, "alice-token", `{"name": "\ufeffa"}`, ""},
		{"line separator in a name", "POST", snapshots, "alice-token", `{"name": "a\u2028b"}`, ""},
		{"lone surrogate in a name", "POST", snapshots, "alice-token", `{"name": "a\ud800b"}`, ""},
		{"control in a volume's name", "PUT", "/v1/volumes/v1", "panel-secret", `{"name": "web\u0000data", ` + register + `}`, ""},
		{"RTL override in a new volume's name", "POST", restore, "panel-secret",
			`{"snapshot_id": "s1", "mode": "new_volume", "new_volume_id": "v2", "new_volume_name": "copy` + "\u202e" + `"}`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := offline(t, c.method, c.target, c.token, c.body)
			requireRefused(t, a, http.StatusBadRequest, "InvalidArgument", c.message)
			if c.message == "" { // a name: the message names the field
				field := "name: "
				if strings.Contains(c.body, "new_volume_name") {
					field = "new_volume_name: "
				}
				assert.True(t, strings.HasPrefix(a.message, field), a.message)
			}
		})
	}
}

// Names in any script, with spaces and punctuation, are names: only invisible and control characters are not.
func TestAPINamesAllowedInAnyScript(t *testing.T) {
	for _, name := range []string{"nightly backup", "Größe – ü", "日本語のバックアップ", "نسخة احتياطية", "before upgrade 🚀", "a\"quoted\" name"} {
		body, err := json.Marshal(map[string]string{"name": name})
		require.NoError(t, err)
		a := offline(t, "POST", "/v1/volumes/v1/snapshots", "alice-token", string(body))
		assert.NotEqual(t, http.StatusBadRequest, a.status, "%q: %s", name, a.raw)
	}
}

// Type errors name the field in the API's words, never Go's ("Go struct field RestoreRequest.mode of type
// string").
func TestAPITypeErrorsNameTheFieldOnly(t *testing.T) {
	volume := `"name": "a", "owner_id": "alice", "hypervisor_id": "hv1", `
	for _, c := range []struct {
		method, target, token, body, message string
	}{
		{"POST", "/v1/volumes/v1/restore", "panel-secret", `{"snapshot_id": "s1", "mode": 1}`, "mode: must be a string"},
		{"POST", "/v1/volumes/v1/restore", "panel-secret", `{"snapshot_id": ["s1"], "mode": "in_place"}`,
			"snapshot_id: must be a string"},
		{"POST", "/v1/volumes/v1/restore", "panel-secret", `{"backup_id": "b1", "mode": "new_volume", "storage": "x"}`,
			"storage: must be an object"},
		{"POST", "/v1/volumes/v1/snapshots", "alice-token", `{"name": {}}`, "name: must be a string"},
		{"POST", "/v1/volumes/v1/snapshots", "alice-token", `{"name": true}`, "name: must be a string"},
		{"PUT", "/v1/volumes/v1", "panel-secret", `{` + volume + `"storage": {"type": 5}}`, "storage.type: must be a string"},
		{"PUT", "/v1/volumes/v1", "panel-secret", `{` + volume + `"storage": {"type": "file", "path": "/v/a"}, "size_bytes": "1G"}`,
			"size_bytes: must be an integer"},
		{"PUT", "/v1/volumes/v1", "panel-secret", `{` + volume + `"storage": {"type": "file", "path": "/v/a"}, "size_bytes": 1.5}`,
			"size_bytes: must be an integer"},
		{"PUT", "/v1/volumes/v1", "panel-secret", `{` + volume + `"storage": {"type": "file", "path": "/v/a"}, "size_bytes": 1e40}`,
			"size_bytes: must be an integer"},
		{"PUT", "/v1/policies/p1", "panel-secret", `{"kind": "backup", "every": "1h", "keep_last": "7"}`,
			"keep_last: must be an integer"},
		{"PUT", "/v1/policies/p1", "panel-secret", `{"kind": "backup", "window": {"start": 1}}`,
			"window.start: must be a string"},
		{"PUT", "/v1/policies/p1", "panel-secret", `{"kind": "backup", "window": []}`, "window: must be an object"},
		{"POST", "/v1/volumes/v1/snapshots", "alice-token", `{"name": "a",}`, ""},
		{"POST", "/v1/volumes/v1/snapshots", "alice-token", `{"name": "a"} {}`, ""},
	} {
		a := offline(t, c.method, c.target, c.token, c.body)
		requireRefused(t, a, http.StatusBadRequest, "InvalidArgument", c.message)
		for _, internal := range []string{"Go ", "struct", "RestoreRequest", "starter.", "workflows.", "json:", "int64", "reflect"} {
			assert.NotContains(t, a.message, internal, c.body)
		}
	}
}
