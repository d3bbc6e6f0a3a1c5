package dashboards_test

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
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
)

// needTool finds a Debian-packaged tool, skipping locally (naming the make target that installs it)
// and failing under CI=true, where `make deps` has run.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (Debian package %s; `make deps` installs it)", name, pkg)
	}
	t.Skipf("%s not found: run `make deps` (installs Debian package %s)", name, pkg)
	return ""
}

func TestAlertRulesPassPromtool(t *testing.T) {
	promtool := needTool(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		// The unit tests fire and withhold real alerts over synthetic series: a behavioural test of
		// the expressions, thresholds and `for` durations, not just their syntax.
		{"test", "rules", "alerts_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

func TestAlertRulesShape(t *testing.T) {
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, "alerts.yml", &rules)
	known := exposedMetrics(t)
	seen := map[string]string{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			seen[r.Alert] = r.Expr
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs summary and description annotations", r.Alert)
			}
			checkMetrics(t, "alert "+r.Alert, r.Expr, known)
		}
	}
	for alert, want := range map[string]string{
		"HoldfastOperationRunningLong":    "holdfast_operations_in_flight",
		"HoldfastBackupFailures":          `result="failed"`,
		"HoldfastBackupMissing":           "holdfast_last_successful_backup_timestamp_seconds",
		"HoldfastAgentDown":               `up{job="holdfast-agent"}`,
		"HoldfastGuardRailRejectionSpike": "holdfast_guard_rail_rejections_total",
	} {
		if expr, ok := seen[alert]; !ok || !strings.Contains(expr, want) {
			t.Errorf("alert %s: missing or its expr %q does not use %s", alert, expr, want)
		}
	}
}

func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile("holdfast.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		SchemaVersion int `json:"schemaVersion"`
		UID           string
		Templating    struct {
			List []struct {
				Name, Type string
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Title      string          `json:"title"`
			Type       string          `json:"type"`
			Datasource json.RawMessage `json:"datasource"`
			Targets    []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("holdfast.json: %v", err)
	}
	if d.SchemaVersion < 36 || d.UID == "" {
		t.Errorf("schemaVersion %d (want >= 36), uid %q", d.SchemaVersion, d.UID)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["hypervisor"] != "query" {
		t.Errorf("templating variables %v: want datasource (datasource) and hypervisor (query)", vars)
	}
	known := exposedMetrics(t)
	byTitle := map[string]string{}
	for _, p := range d.Panels {
		if !strings.Contains(string(p.Datasource), "${datasource}") {
			t.Errorf("panel %q: datasource %s, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		var exprs []string
		for _, tg := range p.Targets {
			checkMetrics(t, "panel "+p.Title, tg.Expr, known)
			exprs = append(exprs, tg.Expr)
		}
		byTitle[strings.ToLower(p.Title)] = strings.Join(exprs, "\n")
	}
	// Each required panel, found by a word of its title, and the metric that makes it that panel.
	for _, want := range []struct{ title, metric string }{
		{"by result", "holdfast_operations_finished_total"},
		{"duration", "holdfast_operation_duration_seconds_bucket"},
		{"throughput", "holdfast_backup_bytes_read_total"},
		{"in flight per hypervisor", "holdfast_operations_in_flight"},
		{"in flight per owner", "holdfast_owner_operations_in_flight"},
		{"rejections", "holdfast_guard_rail_rejections_total"},
		{"retained", "holdfast_retained_bytes"},
		{"last successful backup age", "time() - max by (volume) (holdfast_last_successful_backup_timestamp_seconds)"},
		{"instant restores", "holdfast_instant_exports"},
		{"instant restores", "holdfast_hydrations_in_flight"},
	} {
		found := false
		for title, exprs := range byTitle {
			if strings.Contains(title, want.title) && strings.Contains(exprs, want.metric) {
				found = true
			}
		}
		if !found {
			t.Errorf("no panel titled like %q querying %s", want.title, want.metric)
		}
	}
	if !strings.Contains(byTitle["throughput per hypervisor"], `hypervisor=~"$hypervisor"`) {
		t.Errorf("throughput panel does not filter by the hypervisor variable")
	}
}

var metricRef = regexp.MustCompile(`holdfast_[a-z_]+`)

// checkMetrics fails for every holdfast_* name in expr that Holdfast does not expose, so renaming a
// metric in activities/metrics breaks this test instead of silently blanking a panel or an alert.
func checkMetrics(t *testing.T, where, expr string, known map[string]bool) {
	t.Helper()
	for _, name := range metricRef.FindAllString(expr, -1) {
		base := name
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && known[b] {
				base = b
			}
		}
		if !known[base] {
			t.Errorf("%s: metric %s is not exposed by activities/metrics", where, name)
		}
	}
}

// exposedMetrics collects the holdfast_* string constants of activities/metrics (names.go for the
// workflow-recorded metrics, metrics.go for the agent/API ones), parsed as Go so that comments
// mentioning a name do not count.
func exposedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "activities", "metrics", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && metricRef.FindString(s) == s {
					known[s] = true
				}
			}
			return true
		})
	}
	for _, must := range []string{"holdfast_operations_finished_total", "holdfast_guard_rail_rejections_total"} {
		if !known[must] {
			t.Fatalf("parsing activities/metrics found %v, without %s: the parser is broken", slices.Sorted(maps.Keys(known)), must)
		}
	}
	return known
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
