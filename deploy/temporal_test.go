package deploy_test

import (
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestComposeRunsTheClusterConfig: the compose stack's Temporal is the one `make test-cluster` runs
// (cmd/holdfast/cluster_harness_test.go) — the server release scripts/mk/cluster.mk builds, with
// temporal/server.yaml mounted and selected, every service in a container of its own and two history hosts,
// the schemas set up by the same release's temporal-sql-tool with the schemas it embeds — and every
// environment variable compose gives a server container is one server.yaml reads.
func TestComposeRunsTheClusterConfig(t *testing.T) {
	var c struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Entrypoint  []string          `yaml:"entrypoint"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
		} `yaml:"services"`
	}
	raw, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	mk, err := os.ReadFile("../scripts/mk/cluster.mk")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^TEMPORAL_SERVER_VERSION\s*:=\s*v(\S+)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("scripts/mk/cluster.mk sets no TEMPORAL_SERVER_VERSION")
	}
	version := string(m[1])
	serverYAML, err := os.ReadFile("temporal/server.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The server renders its config as a template only when a comment in its first KiB says so.
	if head := string(serverYAML[:min(len(serverYAML), 1024)]); !strings.Contains(head, "# enable-template") {
		t.Error("temporal/server.yaml: no '# enable-template' comment in its first 1024 bytes")
	}

	services := map[string]int{}
	for name, s := range c.Services {
		image, tag, _ := strings.Cut(s.Image, ":")
		switch image {
		case "temporalio/server":
			if tag != version {
				t.Errorf("%s: %s, scripts/mk/cluster.mk builds %s", name, s.Image, version)
			}
			want := []string{"temporal-server", "--root", "/", "--config", "/etc/temporal/holdfast", "--env", "server"}
			if len(s.Entrypoint) < len(want) || !slices.Equal(s.Entrypoint[:len(want)], want) {
				t.Errorf("%s: entrypoint %v, want it to start with %v", name, s.Entrypoint, want)
			}
			if !slices.Contains(s.Volumes, "./temporal:/etc/temporal/holdfast:ro") {
				t.Errorf("%s: does not mount ./temporal at /etc/temporal/holdfast", name)
			}
			if len(s.Command) != 2 || s.Command[0] != "--service" {
				t.Errorf("%s: command %v, want --service NAME (one service per container)", name, s.Command)
			} else {
				services[s.Command[1]]++
			}
			for env := range s.Environment {
				if !strings.Contains(string(serverYAML), `env "`+env+`"`) {
					t.Errorf("%s: sets %s, which temporal/server.yaml does not read", name, env)
				}
			}
		case "temporalio/admin-tools":
			if !strings.HasPrefix(tag, version+"-") {
				t.Errorf("%s: %s, not the server's release %s", name, s.Image, version)
			}
		case "temporalio/auto-setup":
			t.Errorf("%s: auto-setup runs a configuration of its own, not temporal/server.yaml", name)
		}
	}
	if want := map[string]int{"frontend": 1, "history": 2, "matching": 1, "worker": 1}; !maps.Equal(services, want) {
		t.Errorf("temporal-server containers per service: %v, want %v", services, want)
	}
	if cmd := c.Services["temporal"].Command; !slices.Equal(cmd, []string{"--service", "frontend"}) {
		t.Error("the service named temporal (the address Holdfast and the UI use) is not the frontend")
	}
	schema := strings.Join(c.Services["temporal-schema"].Command, "\n")
	for _, want := range []string{"create-database", "setup-schema -v 0.0", "update-schema --schema-name postgresql/v12/$${db#*:}",
		"temporal:temporal", "temporal_visibility:visibility"} {
		if !strings.Contains(schema, want) {
			t.Errorf("temporal-schema does not run %q", want)
		}
	}
}
