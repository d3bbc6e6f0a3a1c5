// Package apiv1 is Holdfast's HTTP API v1 (docs/api.md) as Go types: every request and response body, shared
// by the server (starter/api), the CLI (cmd/holdfast/cli) and any Go client, so that no two of them can
// disagree about a field. The JSON names, the JSON types and which fields are left out when unset are the
// contract, which changes only backward compatibly: a field may be added (beyond v1, left out when unset),
// never renamed, retyped or dropped. Timestamps are RFC 3339 with nanoseconds, as time.Time writes them.
//
// It imports the standard library only and holds no behaviour, so that a client of the API never pulls in
// Temporal or the server, and the server's internal types can change without changing the wire.
package apiv1

// Storage is where a volume lives: a file (Path, Format) or a Ceph RBD image (Pool, Image).
type Storage struct {
	// Type is "file" or "rbd".
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
	// Format of a file volume, "raw" or "qcow2" (beyond v1): stated at registration or taken from the
	// path's extension, never guessed from the file's contents.
	Format string `json:"format,omitempty"`
	Pool   string `json:"pool,omitempty"`
	Image  string `json:"image,omitempty"`
	// CreatedBy is the restore that created the volume (beyond v1). Holdfast's own: refused in a request.
	CreatedBy string `json:"created_by,omitempty"`
}

// Error is what went wrong, typed: Type is stable (VolumeBusy, Cooldown, NotFound, InvalidArgument, ...) and
// Message is the exact text api.md gives for it, naming the field where a request was wrong.
type Error struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// ErrorResponse is the body of every answer that is not 2xx.
type ErrorResponse struct {
	Error Error `json:"error"`
}

// Health is the body of GET /healthz: Status "ok", or "unavailable" with a fixed Error.
type Health struct {
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}
