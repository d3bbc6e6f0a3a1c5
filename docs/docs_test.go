package docs_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/docs"
)

func TestYAMLToJSON(t *testing.T) {
	out, err := docs.YAMLToJSON([]byte(`
z: first
"200": {description: quoted}
404: {description: bare}
types: [1, 2.5, true, null, ~, "3", 0x10, yes, '']
base: &base {a: 1}
copy: *base
`))
	require.NoError(t, err)
	assert.Equal(t, `{"z":"first","200":{"description":"quoted"},"404":{"description":"bare"},`+
		`"types":[1,2.5,true,null,null,"3",16,"yes",""],"base":{"a":1},"copy":{"a":1}}`, string(out),
		"keys in order and always strings; YAML 1.2 core types (yes is a string)")

	_, err = docs.YAMLToJSON([]byte("a: .nan\n"))
	assert.Error(t, err, "JSON has no NaN")
	_, err = docs.YAMLToJSON([]byte("a: [1\n"))
	assert.Error(t, err)
}

func TestOpenAPIJSONIsTheYAML(t *testing.T) {
	data, err := docs.OpenAPIJSON()
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(data, &doc))
	assert.Equal(t, "3.1.0", doc["openapi"])
	assert.Contains(t, doc["paths"], "/v1/volumes/{volume_id}")
}
