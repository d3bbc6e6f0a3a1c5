package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/holdfast/holdfast/workflows"
)

// nameFields are the free-text names a caller gives (by their path in the body): shown in panels, logs and
// the Web UI, so they must read as what they are.
var nameFields = map[string]bool{"name": true, "new_volume_name": true}

// decode reads a strict JSON body into into (a pointer to a struct). Go's decoder is lenient where a panel's
// typo or a hostile caller should be told no: it matches keys case-insensitively, keeps the last of duplicate
// keys, decodes null into an untouched struct and replaces invalid UTF-8. So the body is first scanned token
// by token against into's json tags (exact keys, no duplicates, an object at the top, valid UTF-8, clean
// names), then decoded. Every refusal is a 400 naming the field, in the API's words, never Go's. An empty
// body is allowed where every field is optional (emptyOK); a body over 1 MiB is refused.
func decode(w http.ResponseWriter, r *http.Request, into any, emptyOK bool) bool {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, "body: larger than 1 MiB")
		case errors.Is(err, os.ErrDeadlineExceeded):
			writeError(w, http.StatusRequestTimeout, ErrRequestTimeout, "body: not received in time")
		default: // the client went away mid-body; the error text would only name addresses
			writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, "body: could not be read")
		}
		return false
	}
	// Only JSON's own whitespace counts: a body of other Unicode spaces (\f, U+00A0, …) is malformed.
	if len(bytes.Trim(data, " \t\r\n")) == 0 {
		if emptyOK {
			return true
		}
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, "body: a JSON object is required")
		return false
	}
	if msg := scanBody(data, reflect.TypeOf(into)); msg != "" {
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, msg)
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields() // the scan already refused them; kept as the decoder's own guard
	if err := dec.Decode(into); err != nil {
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, decodeMessage(err))
		return false
	}
	return true
}

// scanBody checks data against t (the type decoded into) and returns what is wrong, or "".
func scanBody(data []byte, t reflect.Type) string {
	if !utf8.Valid(data) {
		return "body: must be valid UTF-8"
	}
	// json.Valid first: it rejects anything after the one JSON value, including a stray '}' or ']' that
	// Decoder.More would not report, and bounds nesting, so the scan below never sees malformed input.
	if !json.Valid(data) {
		var v any
		var syntax *json.SyntaxError
		if err := json.Unmarshal(data, &v); errors.As(err, &syntax) {
			return fmt.Sprintf("body: malformed JSON at byte %d (one JSON object expected)", syntax.Offset)
		}
		return "body: malformed JSON (one JSON object expected)"
	}
	s := scanner{dec: json.NewDecoder(bytes.NewReader(data))}
	s.dec.UseNumber()
	tok, err := s.dec.Token()
	if err != nil {
		return "body: malformed JSON (one JSON object expected)"
	}
	if tok != json.Delim('{') {
		return "body: must be a JSON object"
	}
	return s.object(deref(t), "")
}

// scanner walks a valid JSON document token by token beside the Go type it will be decoded into.
type scanner struct{ dec *json.Decoder }

// value checks the value that starts with tok; t is the type it decodes into (nil: any value, unchecked
// keys), path its name in messages.
func (s *scanner) value(tok json.Token, t reflect.Type, path string) string {
	t = deref(t)
	switch tok {
	case json.Delim('{'):
		return s.object(t, path)
	case json.Delim('['):
		return s.array(t, path)
	}
	if str, ok := tok.(string); ok && nameFields[path] {
		return checkName(path, str)
	}
	return "" // a scalar of the wrong type is the decoder's to report, with the field's name
}

// object checks keys up to the closing '}': a struct's keys must be exactly its json names, once each;
// other objects (maps, raw values, an object where a scalar belongs) only must not repeat a key.
func (s *scanner) object(t reflect.Type, path string) string {
	var fields map[string]reflect.Type
	var elem reflect.Type
	switch {
	case t == nil:
	case t.Kind() == reflect.Struct:
		fields = jsonFields(t)
	case t.Kind() == reflect.Map:
		elem = t.Elem()
	}
	seen := map[string]bool{}
	for s.dec.More() {
		tok, err := s.dec.Token()
		if err != nil {
			return "body: malformed JSON"
		}
		key, _ := tok.(string)
		at := key
		if path != "" {
			at = path + "." + key
		}
		if seen[key] {
			return at + ": given more than once"
		}
		seen[key] = true
		ft := elem
		if fields != nil {
			var known bool
			if ft, known = fields[key]; !known {
				return at + ": unknown field"
			}
		}
		if tok, err = s.dec.Token(); err != nil {
			return "body: malformed JSON"
		}
		if msg := s.value(tok, ft, at); msg != "" {
			return msg
		}
	}
	_, _ = s.dec.Token() // '}'
	return ""
}

func (s *scanner) array(t reflect.Type, path string) string {
	var elem reflect.Type
	if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
		elem = t.Elem()
	}
	for i := 0; s.dec.More(); i++ {
		tok, err := s.dec.Token()
		if err != nil {
			return "body: malformed JSON"
		}
		if msg := s.value(tok, elem, path+"["+strconv.Itoa(i)+"]"); msg != "" {
			return msg
		}
	}
	_, _ = s.dec.Token() // ']'
	return ""
}

var (
	rawMessageType  = reflect.TypeFor[json.RawMessage]()
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	fieldCache      sync.Map // reflect.Type → map[string]reflect.Type
)

// deref is the type a value decodes into behind pointers; nil for types that take any JSON as they like
// (json.RawMessage, custom unmarshalers, interfaces).
func deref(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t == rawMessageType || t.Kind() == reflect.Interface ||
		reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	return t
}

// jsonFields maps a struct's JSON keys, exactly as encoding/json writes them, to their types: the tag's
// name, else the Go field name; embedded structs without a tag contribute their fields; "-" is no key.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := bytes.Cut([]byte(tag), []byte(","))
		if f.Anonymous && len(name) == 0 {
			if et := deref(f.Type); et != nil && et.Kind() == reflect.Struct {
				for k, v := range jsonFields(et) {
					if _, shadowed := m[k]; !shadowed {
						m[k] = v
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if len(name) == 0 {
			name = []byte(f.Name)
		}
		m[string(name)] = f.Type
	}
	fieldCache.Store(t, m)
	return m
}

// checkName refuses what would make a name read as something else or not at all: control characters (C0,
// DEL, C1: NUL, newlines, escapes for terminals), format characters (bidi overrides and isolates that
// reorder what is shown, zero-width characters, the BOM), line and paragraph separators, and U+FFFD, which
// stands for text that was not valid (a lone surrogate escape decodes to it).
func checkName(field, name string) string {
	for _, r := range name {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || unicode.In(r, unicode.Zl, unicode.Zp) ||
			r == utf8.RuneError {
			return fmt.Sprintf("%s: must not contain control or invisible formatting characters (found U+%04X)", field, r)
		}
	}
	return ""
}

// decodeMessage says what a decode error means in the API's words: the field and the JSON type it takes,
// never Go's struct or type names.
func decodeMessage(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return te.Field + ": must be " + jsonKind(te.Type)
	}
	return "body: does not match the request's fields"
}

func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	default:
		return "another JSON type"
	}
}
