package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup"
)

// httpExports serve backups as raw HTTP streams (GET with Range, HEAD) to Ceph's import-only live
// migrations: an RBD volume restored instantly reads what is not migrated yet from here, through librbd,
// and its migration copies from here. One server per agent, on Config.ExportHTTP (a loopback address: the
// clients are librbd in this host's QEMU and in the agent itself), one path per new volume (derived from
// its ID, so that a restarted agent serves the URL Ceph recorded in the image again). Reads are throttled
// by the hypervisor's limit, like any restore.
type httpExports struct {
	addr    string
	log     *slog.Logger
	limiter *rate.Limiter

	mu     sync.Mutex
	srv    *http.Server
	live   map[string]*httpExport // by new volume ID
	byPath map[string]*httpExport
}

type httpExport struct {
	source string
	path   string
	url    string
	reader *backup.BackupReader
	served atomic.Int64
}

// ready checks that the server can be started (it is started with the first export).
func (x *httpExports) ready() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.startLocked()
}

func (x *httpExports) startLocked() error {
	if x.srv != nil {
		return nil
	}
	if x.addr == "" {
		return errors.New("instant restore onto RBD: no export address configured")
	}
	host, _, err := net.SplitHostPort(x.addr)
	if err != nil {
		return fmt.Errorf("export address %q: %w", x.addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("export address %q: not a loopback address", x.addr)
	}
	ln, err := net.Listen("tcp", x.addr)
	if err != nil {
		return err
	}
	x.srv = &http.Server{Handler: http.HandlerFunc(x.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := x.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			x.log.Error("instant restore HTTP export server stopped", "volume_id", "", "error", err)
		}
	}()
	return nil
}

// path is where target's backup is served.
func (x *httpExports) path(target string) string { return "/" + exportName(target) + ".raw" }

// ensure serves the backup in to its new volume, unless it already is.
func (x *httpExports) ensure(e *backup.Engine, in activities.RestoreBackupInput) (*httpExport, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if l := x.live[in.TargetVolumeID]; l != nil {
		return l, sameSource(l.source, in)
	}
	if err := x.startLocked(); err != nil {
		return nil, err
	}
	r, err := e.OpenBackup(context.Background(), in.SourceVolumeID, in.BackupID,
		backup.ReaderOptions{ReadAhead: 8, CacheCells: 32})
	if err != nil {
		return nil, err
	}
	p := x.path(in.TargetVolumeID)
	l := &httpExport{source: exportSource(in), path: p, url: "http://" + x.addr + p, reader: r}
	if x.live == nil {
		x.live, x.byPath = map[string]*httpExport{}, map[string]*httpExport{}
	}
	x.live[in.TargetVolumeID], x.byPath[p] = l, l
	x.log.Info("instant restore HTTP export serving", "volume_id", in.TargetVolumeID, "source_volume_id",
		in.SourceVolumeID, "backup_id", in.BackupID, "storage", in.Storage, "url", l.url)
	return l, nil
}

// end stops serving target's export (nothing when none is served).
func (x *httpExports) end(target string) {
	x.mu.Lock()
	l := x.live[target]
	if l != nil {
		delete(x.live, target)
		delete(x.byPath, l.path)
	}
	x.mu.Unlock()
	if l != nil {
		l.reader.Close()
		x.log.Info("instant restore HTTP export ended", "volume_id", target)
	}
}

func (x *httpExports) count() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.live)
}

func (x *httpExports) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "read only", http.StatusMethodNotAllowed)
		return
	}
	x.mu.Lock()
	l := x.byPath[r.URL.Path]
	x.mu.Unlock()
	if l == nil {
		http.NotFound(w, r)
		return
	}
	body := &throttledReader{ReadSeeker: io.NewSectionReader(l.reader, 0, l.reader.Size()), ctx: r.Context(),
		limiter: x.limiter, served: &l.served}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, body)
}

// throttledReader waits for the limiter before each read and counts what it served.
type throttledReader struct {
	io.ReadSeeker
	ctx     context.Context
	limiter *rate.Limiter
	served  *atomic.Int64
}

func (t *throttledReader) Read(p []byte) (int, error) {
	if t.limiter != nil && t.limiter.Limit() != rate.Inf {
		p = p[:min(len(p), max(t.limiter.Burst(), 1))]
		if err := t.limiter.WaitN(t.ctx, len(p)); err != nil {
			return 0, err
		}
	}
	n, err := t.ReadSeeker.Read(p)
	t.served.Add(int64(n))
	return n, err
}
