// Package docs holds Holdfast's documentation that the code serves or tests against: the OpenAPI document of
// the HTTP API (openapi.yaml, the canonical file; api.md is its human twin). It only embeds and converts the
// document; it must never import the rest of Holdfast, so that any layer (the API server, its tests, the
// end-to-end tests) may read it.
package docs

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"sync"

	"gopkg.in/yaml.v3"
)

//go:embed openapi.yaml
var openAPIYAML []byte

// OpenAPIYAML returns docs/openapi.yaml as written (a copy: callers may not change the embedded document).
func OpenAPIYAML() []byte { return bytes.Clone(openAPIYAML) }

var openAPIJSON = sync.OnceValues(func() ([]byte, error) { return YAMLToJSON(openAPIYAML) })

// OpenAPIJSON returns docs/openapi.yaml converted to JSON, keys in the document's order (a copy).
func OpenAPIJSON() ([]byte, error) {
	data, err := openAPIJSON()
	return bytes.Clone(data), err
}

// YAMLToJSON converts one YAML document to compact JSON, keeping the order of keys. Keys are always JSON
// strings (an OpenAPI response code such as 200 is a key, not a number), scalars keep the type YAML's core
// schema gives them, and aliases are expanded.
func YAMLToJSON(data []byte) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := writeJSON(&out, &doc); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func writeJSON(out *bytes.Buffer, n *yaml.Node) error {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) != 1 {
			return fmt.Errorf("line %d: want one YAML document", n.Line)
		}
		return writeJSON(out, n.Content[0])
	case yaml.AliasNode:
		return writeJSON(out, n.Alias)
	case yaml.MappingNode:
		out.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			if i > 0 {
				out.WriteByte(',')
			}
			key, err := json.Marshal(n.Content[i].Value)
			if err != nil {
				return err
			}
			out.Write(key)
			out.WriteByte(':')
			if err := writeJSON(out, n.Content[i+1]); err != nil {
				return err
			}
		}
		out.WriteByte('}')
		return nil
	case yaml.SequenceNode:
		out.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				out.WriteByte(',')
			}
			if err := writeJSON(out, c); err != nil {
				return err
			}
		}
		out.WriteByte(']')
		return nil
	case yaml.ScalarNode:
		return writeScalar(out, n)
	}
	return fmt.Errorf("line %d: unexpected YAML node", n.Line)
}

func writeScalar(out *bytes.Buffer, n *yaml.Node) error {
	var v any
	switch n.ShortTag() {
	case "!!null":
		v = nil
	case "!!bool", "!!int", "!!float":
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
	default:
		v = n.Value
	}
	data, err := json.Marshal(v) // refuses .nan and .inf, which JSON cannot say
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	out.Write(data)
	return nil
}
