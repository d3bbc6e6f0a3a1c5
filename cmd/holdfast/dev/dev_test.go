package dev

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/cmd/holdfast/cli"
	"github.com/holdfast/holdfast/starter/startertest"
)

func TestDefaultsFromEnvironment(t *testing.T) {
	env := map[string]string{"HOLDFAST_OWNER_TOKENS": "alice=a1, bob=b2", "HOLDFAST_API_ADDR": "127.0.0.1:9999"}
	o, err := Defaults(func(k string) string { return env[k] })
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"a1": "alice", "b2": "bob"}, o.OwnerTokens)
	assert.Equal(t, "127.0.0.1:9999", o.APIAddr)
	assert.Equal(t, ".holdfast", o.DataDir)
	assert.Equal(t, "127.0.0.1:7233", o.TemporalAddr)
	_, err = Defaults(func(k string) string {
		return map[string]string{"HOLDFAST_OWNER_TOKENS": "alice"}[k]
	})
	assert.ErrorContains(t, err, "HOLDFAST_OWNER_TOKENS")
}

func port(t *testing.T, addr string) int {
	_, p, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	n, err := strconv.Atoi(p)
	require.NoError(t, err)
	return n
}

// TestDevRunsTheProductAndStopsCleanly is the `make run` smoke test: start everything, run the three CLI
// commands it prints, stop it, and find nothing left listening.
func TestDevRunsTheProductAndStopsCleanly(t *testing.T) {
	bin := startertest.TemporalBin(t)
	o := Options{DataDir: filepath.Join(t.TempDir(), ".holdfast"), APIAddr: startertest.FreeAddress(t),
		MetricsAddr: startertest.FreeAddress(t), PanelToken: "dev-token", TemporalBin: bin,
		TemporalAddr: startertest.FreeAddress(t), UIPort: port(t, startertest.FreeAddress(t)),
		LibvirtURI: file.NoLibvirt, OwnerTokens: map[string]string{}}
	var out bytes.Buffer
	o.Out = &out
	ready := make(chan Info, 1)
	o.Ready = func(i Info) { ready <- i }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	var info Info
	select {
	case info = <-ready:
	case err := <-done:
		t.Fatalf("dev stopped early: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("dev did not become ready")
	}
	assert.Contains(t, out.String(), "Temporal Web UI  http://127.0.0.1:")
	assert.Contains(t, out.String(), "Panel token      dev-token")
	assert.Contains(t, out.String(), "volumes are treated as detached")
	st, err := os.Stat(filepath.Join(o.DataDir, "volumes", "sample.qcow2"))
	require.NoError(t, err)
	assert.Positive(t, st.Size())

	// The tour, exactly as printed: the export line gives the environment, every bin/holdfast line runs in
	// order (with dev mode's own cooldown, not one the test picked), and each must succeed.
	env, tour := printedTour(t, out.String())
	require.Len(t, tour, 7, "the tour: snapshot, backup, restore, instant restore, status ×3")
	for _, args := range tour {
		var stdout, stderr bytes.Buffer
		code := cli.Run(context.Background(), args, &stdout, &stderr, func(k string) string { return env[k] })
		require.Equal(t, 0, code, "holdfast %s: %s%s", strings.Join(args, " "), stdout.String(), stderr.String())
	}
	assert.Equal(t, info.APIURL, env["HOLDFAST_API"])
	images, _ := filepath.Glob(filepath.Join(o.DataDir, "volumes", "[^.]*.qcow2"))
	assert.Len(t, images, 3, "the tour restored the sample into two new volumes beside it: %v", images)
	// The instant restore stands alone once its operation completed (--wait), and served nothing after.
	instant := apiVolume(t, env, SampleInstant)
	assert.NotContains(t, instant, "hydrating")
	info2, err := exec.Command("qemu-img", "info", "--output=json", "-f", "qcow2",
		instant["storage"].(map[string]any)["path"].(string)).CombinedOutput()
	require.NoError(t, err, "%s", info2)
	assert.NotContains(t, string(info2), "backing-filename")
	sockets, _ := filepath.Glob(filepath.Join(o.DataDir, "exports", "*.sock"))
	assert.Empty(t, sockets, "no export left")
	// The metrics the tour points at serve Holdfast's own.
	resp, err := http.Get(info.Metrics)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(body), "holdfast_")
	// Billing is wired: the hourly schedule exists on the server and writes to the dev ledger.
	tc, err := client.Dial(client.Options{HostPort: o.TemporalAddr, Logger: startertest.QuietLogger{}})
	require.NoError(t, err)
	desc, err := tc.ScheduleClient().GetHandle(context.Background(), "holdfast-billing").Describe(context.Background())
	require.NoError(t, err)
	assert.Equal(t, time.Hour, desc.Schedule.Spec.Intervals[0].Every)
	tc.Close()
	_, err = os.Stat(filepath.Join(o.DataDir, "billing.jsonl"))
	require.NoError(t, err)

	manifests, _ := filepath.Glob(filepath.Join(o.DataDir, "backups", "volumes", SampleVolume, "manifests", "*"))
	assert.Len(t, manifests, 1, "the backup is in the local store")

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("dev did not stop")
	}
	for _, addr := range []string{o.TemporalAddr, o.APIAddr, o.MetricsAddr} {
		ln, err := net.Listen("tcp", addr)
		require.NoError(t, err, "%s still in use after stop", addr)
		ln.Close()
	}
}

// apiVolume is GET /v1/volumes/{id} with the tour's environment.
func apiVolume(t *testing.T, env map[string]string, id string) map[string]any {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, env["HOLDFAST_API"]+"/v1/volumes/"+id, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+env["HOLDFAST_TOKEN"])
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var v map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&v))
	return v
}

// printedTour parses what dev printed after "Try, in another shell": the variables of its export line,
// and the arguments of each bin/holdfast line (a trailing "# comment" dropped).
func printedTour(t *testing.T, out string) (map[string]string, [][]string) {
	t.Helper()
	_, rest, ok := strings.Cut(out, "Try, in another shell")
	require.True(t, ok, "no tour in %s", out)
	env := map[string]string{}
	var tour [][]string
	for _, line := range strings.Split(rest, "\n") {
		line, _, _ = strings.Cut(line, "#")
		fields := strings.Fields(line)
		switch {
		case len(fields) > 1 && fields[0] == "export":
			for _, kv := range fields[1:] {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		case len(fields) > 1 && fields[0] == "bin/holdfast":
			tour = append(tour, fields[1:])
		}
	}
	return env, tour
}
