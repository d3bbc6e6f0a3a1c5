package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/holdfast/holdfast/workers/config"
)

// TestDockerCompose does what `docker compose config` would (no Docker daemon here) and a little more:
// every dependency, volume and network is declared, bind-mounted files exist, Prometheus scrapes services
// that exist under the job names the alerts use, and Holdfast's config passes its own validation.
func TestDockerCompose(t *testing.T) {
	var c struct {
		Services map[string]struct {
			Image     string         `yaml:"image"`
			Build     map[string]any `yaml:"build"`
			DependsOn any            `yaml:"depends_on"`
			Command   []string       `yaml:"command"`
			EnvFile   []string       `yaml:"env_file"`
			Volumes   []string       `yaml:"volumes"`
			Networks  []string       `yaml:"networks"`
			Ports     []string       `yaml:"ports"`
		} `yaml:"services"`
		Volumes  map[string]any `yaml:"volumes"`
		Networks map[string]any `yaml:"networks"`
	}
	raw, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, s := range []string{"postgresql", "temporal", "temporal-ui", "prometheus", "grafana", "minio",
		"holdfast-worker", "holdfast-api"} {
		if _, ok := c.Services[s]; !ok {
			t.Errorf("service %s missing", s)
		}
	}
	flags := cliFlags(t)
	for name, s := range c.Services {
		if s.Image == "" && s.Build == nil {
			t.Errorf("%s: neither image nor build", name)
		}
		var deps []string
		switch d := s.DependsOn.(type) {
		case []any:
			for _, v := range d {
				deps = append(deps, v.(string))
			}
		case map[string]any:
			for k := range d {
				deps = append(deps, k)
			}
		}
		for _, d := range deps {
			if _, ok := c.Services[d]; !ok {
				t.Errorf("%s depends on unknown service %s", name, d)
			}
		}
		for _, n := range s.Networks {
			if _, ok := c.Networks[n]; !ok {
				t.Errorf("%s: network %s not declared", name, n)
			}
		}
		for _, f := range s.EnvFile {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("%s: env_file %v", name, err)
			}
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(src); err != nil {
					t.Errorf("%s: bind mount %v", name, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s: named volume %s not declared", name, src)
			}
		}
		if b := s.Build; b != nil {
			if _, err := os.Stat(filepath.Join(b["context"].(string), b["dockerfile"].(string))); err != nil {
				t.Errorf("%s: build %v", name, err)
			}
		}
		if strings.HasPrefix(name, "holdfast-") {
			sub := strings.TrimPrefix(name, "holdfast-")
			if len(s.Command) == 0 || s.Command[0] != sub {
				t.Fatalf("%s: command %v, want holdfast %s", name, s.Command, sub)
			}
			args := parseArgs(t, name, s.Command[1:], flags[sub])
			if !strings.HasPrefix(args["metrics"], "0.0.0.0:") {
				t.Errorf("%s: --metrics %q is not reachable by Prometheus", name, args["metrics"])
			}
		}
	}

	cfgRaw, err := os.ReadFile("compose/holdfast.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(strings.NewReader(string(cfgRaw)))
	if err != nil {
		t.Fatalf("compose/holdfast.yaml rejected by workers/config: %v", err)
	}
	env := parseEnvFile(t, "compose/holdfast.env")
	for _, s := range cfg.Storages {
		for _, name := range []string{s.S3.AccessKeyEnv, s.S3.SecretKeyEnv} {
			if _, ok := env[name]; name != "" && !ok {
				t.Errorf("compose/holdfast.yaml names %s, compose/holdfast.env does not set it", name)
			}
		}
	}
	if host, _, _ := strings.Cut(cfg.Temporal.Address, ":"); c.Services[host].Image == "" {
		t.Errorf("temporal.address %s is not a compose service", cfg.Temporal.Address)
	}

	var prom struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	promRaw, err := os.ReadFile("compose/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(promRaw, &prom); err != nil {
		t.Fatal(err)
	}
	var jobs []string
	for _, sc := range prom.ScrapeConfigs {
		jobs = append(jobs, sc.JobName)
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, _ := strings.Cut(target, ":")
				if host == "host.docker.internal" {
					continue // the agent, on the host by design
				}
				if _, ok := c.Services[host]; !ok {
					t.Errorf("job %s scrapes %s, not a compose service", sc.JobName, target)
				} else if strings.HasPrefix(host, "holdfast-") {
					sub := strings.TrimPrefix(host, "holdfast-")
					if got := parseArgs(t, host, c.Services[host].Command[1:], flags[sub])["metrics"]; got != "0.0.0.0:"+port {
						t.Errorf("job %s scrapes port %s, %s serves metrics on %s", sc.JobName, port, host, got)
					}
				}
			}
		}
	}
	for _, j := range []string{"holdfast-worker", "holdfast-api", "holdfast-agent"} {
		if !slices.Contains(jobs, j) {
			t.Errorf("prometheus.yml has no job %s (dashboards/alerts.yml selects on it)", j)
		}
	}
	// The rule file is mounted from dashboards/alerts.yml; check it the way Prometheus will load it.
	if promtool, err := exec.LookPath("promtool"); err == nil {
		tmp := filepath.Join(t.TempDir(), "prometheus.yml")
		abs, _ := filepath.Abs("../dashboards/alerts.yml")
		fixed := strings.ReplaceAll(string(promRaw), prom.RuleFiles[0], abs)
		if err := os.WriteFile(tmp, []byte(fixed), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(promtool, "check", "config", tmp).CombinedOutput(); err != nil {
			t.Errorf("promtool check config: %v\n%s", err, out)
		}
	}
}
