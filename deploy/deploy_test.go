package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// kubeconform and its schemas are built by `make tools` (scripts/mk/ops.mk): the binary from source
// through the Go module proxy, the schemas generated offline by ./kubeschema from k8s.io/kubernetes.
const kubernetesVersion = "1.31.4"

// need returns path if it exists, skipping locally with the make target that creates it and failing
// under CI=true.
func need(t *testing.T, path, target string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing (`%s` builds it)", path, target)
		}
		t.Skipf("%s missing: run `%s`", path, target)
	}
	return path
}

func TestKubernetesManifestsPassKubeconform(t *testing.T) {
	kubeconform := need(t, filepath.Join("..", "bin", "kubeconform"), "make tools")
	schemas := need(t, filepath.Join("..", "bin", "kubernetes-schemas", "v"+kubernetesVersion+"-standalone-strict"), "make tools")
	// -strict: schemas forbid unknown fields (a misspelt readinessProbe fails) and duplicate keys fail.
	// The schema location is local, so nothing is downloaded; a kind without a schema is an error.
	out, err := exec.Command(kubeconform, "-strict", "-summary", "-kubernetes-version", kubernetesVersion,
		"-schema-location", filepath.Dir(schemas)+"/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json",
		"kubernetes").CombinedOutput()
	if err != nil {
		t.Fatalf("kubeconform: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("Invalid: 0, Errors: 0, Skipped: 0")) {
		t.Fatalf("kubeconform: %s", out)
	}
}

// manifest is the part of a Kubernetes object the structural checks read.
type manifest struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name        string            `yaml:"name"`
		Namespace   string            `yaml:"namespace"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		Replicas *int           `yaml:"replicas"`
		Selector map[string]any `yaml:"selector"`
		Ports    []servicePort  `yaml:"ports"`
		Template struct {
			Metadata struct {
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type servicePort struct {
	Name       string `yaml:"name"`
	TargetPort any    `yaml:"targetPort"`
}

type podSpec struct {
	SecurityContext struct {
		RunAsNonRoot bool `yaml:"runAsNonRoot"`
	} `yaml:"securityContext"`
	Containers []struct {
		Image   string   `yaml:"image"`
		Args    []string `yaml:"args"`
		EnvFrom []struct {
			SecretRef struct{ Name string } `yaml:"secretRef"`
		} `yaml:"envFrom"`
		Ports []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		ReadinessProbe *probe                  `yaml:"readinessProbe"`
		LivenessProbe  *probe                  `yaml:"livenessProbe"`
		Resources      map[string]any          `yaml:"resources"`
		SecurityCtx    map[string]any          `yaml:"securityContext"`
		VolumeMounts   []struct{ Name string } `yaml:"volumeMounts"`
	} `yaml:"containers"`
	Volumes []struct {
		Name   string `yaml:"name"`
		Secret *struct {
			SecretName string `yaml:"secretName"`
			Optional   bool   `yaml:"optional"`
		} `yaml:"secret"`
		ConfigMap *struct{ Name string } `yaml:"configMap"`
	} `yaml:"volumes"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
	TCPSocket *struct{ Port any } `yaml:"tcpSocket"`
}

func loadManifests(t *testing.T) map[string]manifest {
	t.Helper()
	files, _ := filepath.Glob("kubernetes/*.yaml")
	objs := map[string]manifest{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		for {
			var m manifest
			if err := dec.Decode(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if m.APIVersion == "" || m.Kind == "" || m.Metadata.Name == "" {
				t.Errorf("%s: object without apiVersion, kind or metadata.name", f)
			}
			if m.Kind != "Namespace" && m.Metadata.Namespace != "holdfast" {
				t.Errorf("%s: %s %s not in namespace holdfast", f, m.Kind, m.Metadata.Name)
			}
			objs[m.Kind+"/"+m.Metadata.Name] = m
		}
	}
	return objs
}

// TestKubernetesManifestsMatchTheBinary checks what a schema cannot: that the containers run real
// holdfast subcommands with real flags, read the env vars the binary reads, expose the ports the flags
// listen on, probe /healthz, and load a config that Holdfast's own validation accepts.
func TestKubernetesManifestsMatchTheBinary(t *testing.T) {
	objs := loadManifests(t)
	for _, want := range []string{"Namespace/holdfast", "ConfigMap/holdfast-config", "Secret/holdfast-secrets",
		"Deployment/holdfast-worker", "Deployment/holdfast-api", "Service/holdfast-api"} {
		if _, ok := objs[want]; !ok {
			t.Errorf("missing %s", want)
		}
	}
	cfgText := objs["ConfigMap/holdfast-config"].Data["holdfast.yaml"]
	cfg, err := config.Parse(strings.NewReader(cfgText))
	if err != nil {
		t.Fatalf("ConfigMap holdfast-config: holdfast.yaml rejected by workers/config: %v", err)
	}
	envKnown := binaryEnv(t, cfg)
	secret := objs["Secret/holdfast-secrets"]
	for k, v := range secret.StringData {
		if !envKnown[k] {
			t.Errorf("Secret holdfast-secrets: key %s is not an env var holdfast reads (%v)", k, slices.Sorted(maps.Keys(envKnown)))
		}
		if v != "" && !strings.HasPrefix(v, "REPLACE") {
			t.Errorf("Secret holdfast-secrets: %s holds a value, not a REPLACE placeholder", k)
		}
	}
	flags := cliFlags(t)

	for _, tc := range []struct {
		name, subcommand string
		replicas         int
		ports            map[string]string // container port name -> flag whose address it must match
	}{
		{"holdfast-worker", "worker", 2, map[string]string{"metrics": "metrics"}},
		{"holdfast-api", "api", 0, map[string]string{"http": "listen", "metrics": "metrics"}},
	} {
		d, ok := objs["Deployment/"+tc.name]
		if !ok {
			continue
		}
		if tc.replicas > 0 && (d.Spec.Replicas == nil || *d.Spec.Replicas != tc.replicas) {
			t.Errorf("%s: replicas %v, want %d", tc.name, d.Spec.Replicas, tc.replicas)
		}
		pod := d.Spec.Template.Spec
		if !pod.SecurityContext.RunAsNonRoot {
			t.Errorf("%s: pod must run as non-root", tc.name)
		}
		ann := d.Spec.Template.Metadata.Annotations
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" {
			t.Errorf("%s: prometheus.io annotations %v", tc.name, ann)
		}
		if len(pod.Containers) != 1 {
			t.Fatalf("%s: %d containers, want 1", tc.name, len(pod.Containers))
		}
		c := pod.Containers[0]
		if !strings.Contains(c.Image, "holdfast") || len(c.Args) == 0 || c.Args[0] != tc.subcommand {
			t.Errorf("%s: image %q args %v, want holdfast %s ...", tc.name, c.Image, c.Args, tc.subcommand)
			continue
		}
		args := parseArgs(t, tc.name, c.Args[1:], flags[tc.subcommand])
		if args["config"] == "" {
			t.Errorf("%s: no --config", tc.name)
		} else if !strings.HasPrefix(args["config"], "/etc/holdfast/") {
			t.Errorf("%s: --config %s is not in the mounted /etc/holdfast", tc.name, args["config"])
		}
		ports := map[string]int{}
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
		}
		for portName, flag := range tc.ports {
			addr := args[flag]
			if !strings.HasPrefix(addr, "0.0.0.0:") {
				t.Errorf("%s: --%s %q must listen on 0.0.0.0 to be reachable in the pod", tc.name, flag, addr)
			}
			if want := strings.TrimPrefix(addr, "0.0.0.0:"); want != strconv.Itoa(ports[portName]) {
				t.Errorf("%s: port %s is %d, --%s listens on %s", tc.name, portName, ports[portName], flag, addr)
			}
		}
		if ann["prometheus.io/port"] != strconv.Itoa(ports["metrics"]) {
			t.Errorf("%s: prometheus.io/port %s, metrics port %d", tc.name, ann["prometheus.io/port"], ports["metrics"])
		}
		if c.LivenessProbe == nil || c.Resources["requests"] == nil || c.Resources["limits"] == nil {
			t.Errorf("%s: needs a liveness probe, resource requests and limits", tc.name)
		}
		if c.SecurityCtx["readOnlyRootFilesystem"] != true || c.SecurityCtx["allowPrivilegeEscalation"] != false {
			t.Errorf("%s: container securityContext %v", tc.name, c.SecurityCtx)
		}
		if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef.Name != secret.Metadata.Name {
			t.Errorf("%s: env must come from Secret %s", tc.name, secret.Metadata.Name)
		}
		var tlsOptional bool
		for _, v := range pod.Volumes {
			if v.Secret != nil && v.Secret.SecretName == "holdfast-temporal-tls" {
				tlsOptional = v.Secret.Optional
			}
			if v.ConfigMap != nil && v.ConfigMap.Name != "holdfast-config" {
				t.Errorf("%s: mounts ConfigMap %s", tc.name, v.ConfigMap.Name)
			}
		}
		if !tlsOptional {
			t.Errorf("%s: the Temporal TLS Secret must be mounted, optional", tc.name)
		}
		if tc.subcommand == "api" {
			rp := c.ReadinessProbe
			if rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Path != "/healthz" || rp.HTTPGet.Port != "http" {
				t.Errorf("%s: readiness probe must GET /healthz on port http", tc.name)
			}
			svc := objs["Service/holdfast-api"]
			if len(svc.Spec.Ports) == 0 || svc.Spec.Ports[0].TargetPort != "http" {
				t.Errorf("Service holdfast-api must target port http")
			}
			if sel, _ := svc.Spec.Selector["app.kubernetes.io/name"].(string); sel != d.Spec.Template.Metadata.Labels["app.kubernetes.io/name"] {
				t.Errorf("Service holdfast-api selects %q, pods are labelled %q", sel, d.Spec.Template.Metadata.Labels["app.kubernetes.io/name"])
			}
		}
	}
}

// binaryEnv is every HOLDFAST_* variable the servers read (string literals in cmd/holdfast and workers/,
// tests excluded), plus the credential variables the config names.
func binaryEnv(t *testing.T, cfg *config.Config) map[string]bool {
	t.Helper()
	env := map[string]bool{}
	lit := regexp.MustCompile(`"(HOLDFAST_[A-Z_]+)"`)
	for _, dir := range []string{"../cmd/holdfast", "../workers", "../cmd/holdfast/dev"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range lit.FindAllSubmatch(raw, -1) {
				env[string(m[1])] = true
			}
		}
	}
	if !env["HOLDFAST_PANEL_TOKEN"] {
		t.Fatalf("found %v in the binary's sources, not HOLDFAST_PANEL_TOKEN: the scan is broken", env)
	}
	for _, s := range cfg.Storages {
		for _, name := range []string{s.S3.AccessKeyEnv, s.S3.SecretKeyEnv} {
			if name != "" {
				env[name] = true
			}
		}
	}
	return env
}

// cliFlags reads each server subcommand's flags from cmd/holdfast/main.go: the fs.String/Duration/...
// calls in func runWorker, runAgent and runAPI, plus --config, which loadConfig adds to each.
func cliFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	raw, err := os.ReadFile("../cmd/holdfast/main.go")
	if err != nil {
		t.Fatal(err)
	}
	src := string(raw)
	flagDef := regexp.MustCompile(`fs\.[A-Za-z]+\("([a-z-]+)"`)
	out := map[string]map[string]bool{}
	for sub, fn := range map[string]string{"worker": "runWorker", "agent": "runAgent", "api": "runAPI"} {
		i := strings.Index(src, "\nfunc "+fn+"(")
		if i < 0 {
			t.Fatalf("cmd/holdfast/main.go has no func %s", fn)
		}
		body := src[i+1:]
		if j := strings.Index(body, "\n}\n"); j > 0 {
			body = body[:j]
		}
		out[sub] = map[string]bool{}
		for _, m := range flagDef.FindAllStringSubmatch(body, -1) {
			out[sub][m[1]] = true
		}
		if strings.Contains(body, "loadConfig(fs") {
			out[sub]["config"] = true
		}
	}
	if !out["agent"]["hypervisor"] || !out["api"]["listen"] {
		t.Fatalf("flags parsed from main.go look wrong: %v", out)
	}
	return out
}

// parseArgs reads "--name value" pairs (the form the manifests use) and fails on unknown flags.
func parseArgs(t *testing.T, where string, args []string, known map[string]bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		name, ok := strings.CutPrefix(args[i], "--")
		if !ok || i+1 >= len(args) {
			t.Errorf("%s: argument %q is not --flag value", where, args[i])
			continue
		}
		if !known[name] {
			t.Errorf("%s: --%s is not a flag of this subcommand (%v)", where, name, slices.Sorted(maps.Keys(known)))
		}
		out[name] = args[i+1]
		i++
	}
	return out
}

func TestSystemdAgentUnit(t *testing.T) {
	unit := parseUnit(t, "systemd/holdfast-agent.service")
	svc := unit["Service"]
	for key, want := range map[string]string{"User": "root", "Restart": "always"} {
		if got := svc[key]; len(got) != 1 || got[0] != want {
			t.Errorf("[Service] %s=%v, want %s", key, got, want)
		}
	}
	for _, key := range []string{"LimitNOFILE", "EnvironmentFile", "ExecStart"} {
		if len(svc[key]) == 0 {
			t.Errorf("[Service] has no %s", key)
		}
	}
	if got := unit["Install"]["WantedBy"]; len(got) != 1 || got[0] != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%v", got)
	}
	execStart := strings.Fields(svc["ExecStart"][0])
	if len(execStart) < 2 || filepath.Base(execStart[0]) != "holdfast" || execStart[1] != "agent" {
		t.Fatalf("ExecStart %v, want holdfast agent ...", execStart)
	}
	args := parseArgs(t, "ExecStart", execStart[2:], cliFlags(t)["agent"])
	// The env file must define every ${VAR} ExecStart uses, or systemd passes an empty --hypervisor.
	envFile := parseEnvFile(t, "systemd/holdfast-agent.env")
	for flag, v := range args {
		if name, ok := strings.CutPrefix(v, "${"); ok {
			name = strings.TrimSuffix(name, "}")
			if _, ok := envFile[name]; !ok {
				t.Errorf("ExecStart --%s uses ${%s}, which holdfast-agent.env does not set", flag, name)
			}
		}
	}
	if args["hypervisor"] == "" || args["config"] == "" {
		t.Errorf("ExecStart lacks --hypervisor or --config: %v", args)
	}
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		out, _ := exec.Command(analyze, "verify", "systemd/holdfast-agent.service").CombinedOutput()
		// The binary is not installed on the test machine; anything else systemd says is a defect.
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" && !strings.Contains(line, "/usr/local/bin/holdfast is not executable") {
				t.Errorf("systemd-analyze verify: %s", line)
			}
		}
	}
}

// parseUnit reads an INI-style systemd unit into section -> key -> values.
func parseUnit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not key=value in a section: %q", path, n, line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	for _, s := range []string{"Unit", "Service", "Install"} {
		if out[s] == nil {
			t.Errorf("%s: no [%s] section", path, s)
		}
	}
	return out
}

func parseEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s: %q is not KEY=value", path, line)
		}
		out[k] = v
	}
	return out
}

// The documented setup and the compose stack register every search attribute the workflows upsert, with
// its type: a missing one stops the control worker at start.
func TestSearchAttributesRegisteredAsTheWorkflowsNeed(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	compose, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, sa := range workflows.SearchAttributes {
		cmd := "temporal operator search-attribute create --namespace holdfast --name " + sa.Name + " --type " + sa.Type
		if !strings.Contains(string(readme), cmd) {
			t.Errorf("deploy/README.md lacks %q", cmd)
		}
		if !regexp.MustCompile(`for sa in [^;]*\b` + sa.Name + `=` + sa.Type + `\b`).Match(compose) {
			t.Errorf("docker-compose.yml temporal-setup does not register %s=%s", sa.Name, sa.Type)
		}
	}
}
