// Command kubeschema writes the JSON schemas kubeconform validates Holdfast's
// Kubernetes manifests against, generated offline from the OpenAPI document
// in the k8s.io/kubernetes Go module.
//
// kubeconform downloads its schemas from GitHub by default, which neither CI
// nor the build machines can reach; the Go module proxy can serve the
// Kubernetes source, whose api/openapi-spec/swagger.json is the origin of
// those same schemas. This does what kubeconform's openapi2jsonschema.py does
// for the "-standalone-strict" flavour: one self-contained file per kind,
// named as kubeconform's default template expects
// ({{.ResourceKind}}{{.KindSuffix}}.json), with additionalProperties false on
// every object so a misspelt field (readinesProbe) fails validation.
//
// Usage: go run ./deploy/kubeschema -kubernetes-version 1.31.4 -out DIR
// writes DIR/v1.31.4-standalone-strict/*.json.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

func main() {
	version := flag.String("kubernetes-version", "1.31.4", "k8s.io/kubernetes module version, without the v")
	out := flag.String("out", "bin/kubernetes-schemas", "output directory")
	flag.Parse()
	if err := run(strings.TrimPrefix(*version, "v"), *out); err != nil {
		fmt.Fprintln(os.Stderr, "kubeschema:", err)
		os.Exit(1)
	}
}

func run(version, out string) error {
	swagger, err := downloadSwagger(version)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(swagger)
	if err != nil {
		return err
	}
	dir := filepath.Join(out, "v"+version+"-standalone-strict")
	// Write into a temporary directory and rename, so an interrupted run never
	// leaves a half-filled directory that make would take as done.
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	n, err := Generate(raw, tmp)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "kubeschema: %d schemas in %s\n", n, dir)
	return nil
}

// downloadSwagger fetches k8s.io/kubernetes through the module proxy (or
// finds it in the module cache) and returns its swagger.json. It runs outside
// Holdfast's module so that go.mod and go.sum stay untouched: Holdfast does
// not depend on Kubernetes, it only reads one file of it.
func downloadSwagger(version string) (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", "k8s.io/kubernetes@v"+version)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GO111MODULE=on", "GOFLAGS=")
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download k8s.io/kubernetes@v%s: %w", version, err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(b, &mod); err != nil {
		return "", err
	}
	if mod.Error != "" {
		return "", fmt.Errorf("go mod download: %s", mod.Error)
	}
	return filepath.Join(mod.Dir, "api", "openapi-spec", "swagger.json"), nil
}

const refPrefix = "#/definitions/"

// Generate writes one strict, standalone schema per Kubernetes kind found in
// the swagger document to dir and returns how many it wrote.
func Generate(swaggerJSON []byte, dir string) (int, error) {
	var doc struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(swaggerJSON, &doc); err != nil {
		return 0, fmt.Errorf("swagger.json: %w", err)
	}
	defs := doc.Definitions
	// The two types whose wire form is not what swagger says: Kubernetes
	// accepts `port: 8080` and `port: http`, and `cpu: 1` as well as "500m".
	defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = map[string]any{
		"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}},
	}
	defs["io.k8s.apimachinery.pkg.api.resource.Quantity"] = map[string]any{
		"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}},
	}
	for _, d := range defs {
		strict(d)
	}
	n := 0
	for name, d := range defs {
		gvks, _ := d["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			gvk, _ := g.(map[string]any)
			group, _ := gvk["group"].(string)
			version, _ := gvk["version"].(string)
			kind, _ := gvk["kind"].(string)
			if kind == "" || version == "" {
				continue
			}
			schema := map[string]any{
				"$schema":     "http://json-schema.org/draft-04/schema#",
				"$ref":        refPrefix + name,
				"definitions": closure(defs, name),
			}
			b, err := json.Marshal(schema)
			if err != nil {
				return n, err
			}
			if err := os.WriteFile(filepath.Join(dir, fileName(group, version, kind)), b, 0o644); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// fileName mirrors kubeconform's KindSuffix: "-v1" for the core group, else
// the group's first DNS label and the version ("-networking-v1").
func fileName(group, version, kind string) string {
	suffix := "-" + version
	if group != "" {
		suffix = "-" + strings.Split(group, ".")[0] + suffix
	}
	return strings.ToLower(kind) + strings.ToLower(suffix) + ".json"
}

// strict forbids properties the schema does not list, recursively, on every
// object that lists its properties (maps such as labels have none and keep
// accepting any key).
func strict(v any) {
	switch s := v.(type) {
	case map[string]any:
		if _, ok := s["properties"]; ok {
			if _, set := s["additionalProperties"]; !set {
				s["additionalProperties"] = false
			}
		}
		for _, c := range s {
			strict(c)
		}
	case []any:
		for _, c := range s {
			strict(c)
		}
	}
}

// closure returns the definitions name refers to, transitively, so each kind's
// file holds only what it needs instead of all 600-odd definitions.
func closure(defs map[string]map[string]any, name string) map[string]any {
	out := map[string]any{}
	var visit func(string)
	visit = func(n string) {
		if _, seen := out[n]; seen {
			return
		}
		d, ok := defs[n]
		if !ok {
			return
		}
		out[n] = d
		walkRefs(d, visit)
	}
	visit(name)
	return out
}

func walkRefs(v any, visit func(string)) {
	switch s := v.(type) {
	case map[string]any:
		if r, ok := s["$ref"].(string); ok && strings.HasPrefix(r, refPrefix) {
			visit(strings.TrimPrefix(r, refPrefix))
		}
		for _, c := range s {
			walkRefs(c, visit)
		}
	case []any:
		for _, c := range s {
			walkRefs(c, visit)
		}
	}
}
