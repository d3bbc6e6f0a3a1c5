package dev

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/starter/startertest"
)

// TestMain lets this test binary stand in for `holdfast dev` as a real process (HOLDFAST_DEV_CHILD=1), so
// a test can kill it as an operator's shell or a crash would.
func TestMain(m *testing.M) {
	if os.Getenv("HOLDFAST_DEV_CHILD") == "1" {
		o := childOptions(os.Getenv)
		if err := Run(context.Background(), o); err != nil {
			fmt.Fprintln(os.Stderr, "holdfast dev:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func childOptions(getenv func(string) string) Options {
	ui, _ := strconv.Atoi(getenv("CHILD_UI_PORT"))
	cooldown := time.Duration(0)
	return Options{DataDir: getenv("CHILD_DATA_DIR"), APIAddr: getenv("CHILD_API_ADDR"),
		MetricsAddr: getenv("CHILD_METRICS_ADDR"), PanelToken: "dev-token", TemporalBin: getenv("CHILD_TEMPORAL_BIN"),
		TemporalAddr: getenv("CHILD_TEMPORAL_ADDR"), UIPort: ui, LibvirtURI: file.NoLibvirt,
		OwnerTokens: map[string]string{}, Cooldown: &cooldown, Out: os.Stdout}
}

// devChild starts `holdfast dev` as a process of its own (in its own process group, as a shell would) and
// waits until its API answers. It returns the process and its data directory.
func devChild(t *testing.T) (*exec.Cmd, string, string) {
	dir := filepath.Join(t.TempDir(), ".holdfast")
	api := startertest.FreeAddress(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	logPath := filepath.Join(t.TempDir(), "dev.log")
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HOLDFAST_DEV_CHILD=1", "CHILD_DATA_DIR="+dir, "CHILD_API_ADDR="+api,
		"CHILD_METRICS_ADDR="+startertest.FreeAddress(t), "CHILD_TEMPORAL_BIN="+startertest.TemporalBin(t),
		"CHILD_TEMPORAL_ADDR="+startertest.FreeAddress(t),
		"CHILD_UI_PORT="+strconv.Itoa(port(t, startertest.FreeAddress(t))))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_, _ = cmd.Process.Wait()
		if pid := temporalPID(t, dir); pid != 0 { // never leave a server behind, whatever the code did
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("holdfast dev's output:\n%s", out)
			if log, err := os.ReadFile(filepath.Join(dir, "temporal.log")); err == nil {
				t.Logf("temporal.log:\n%s", log)
			}
		}
	})
	startertest.WaitFor(t, "holdfast dev ready", func() bool {
		out, _ := os.ReadFile(logPath)
		return strings.Contains(string(out), "Holdfast dev is running.")
	})
	resp, err := http.Get("http://" + api + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	return cmd, dir, logPath
}

// temporalPID finds the dev server serving a data directory (its --db-filename is under it); 0 if none.
func temporalPID(t *testing.T, dataDir string) int {
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 1 && strings.Contains(string(cmdline), filepath.Join(dataDir, "temporal.db")) &&
			strings.Contains(args[0], "temporal") {
			if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil &&
				strings.Contains(string(st), ") Z ") {
				continue // a zombie is dead
			}
			return pid
		}
	}
	return 0
}

// kill -9 of holdfast dev's process group (what a terminal's hangup or an OOM kill of the group does) takes
// the Temporal dev server with it, so the next `make run` finds its ports free.
func TestDevsTemporalDiesWithIt(t *testing.T) {
	cmd, dir, _ := devChild(t)
	pid := temporalPID(t, dir)
	require.NotZero(t, pid, "the dev server runs")
	require.NoError(t, syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL))
	_, _ = cmd.Process.Wait()
	startertest.WaitFor(t, "the Temporal dev server to die with holdfast dev", func() bool {
		return temporalPID(t, dir) == 0
	})
}

// When its Temporal dev server dies, holdfast dev says so and exits non-zero, instead of staying up with
// /healthz answering 503.
func TestDevExitsWhenTemporalDies(t *testing.T) {
	cmd, dir, logPath := devChild(t)
	pid := temporalPID(t, dir)
	require.NotZero(t, pid)
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit, "holdfast dev exits with an error")
	case <-time.After(time.Minute):
		t.Fatal("holdfast dev stayed up after its Temporal dev server died")
	}
	out, err := os.ReadFile(logPath)
	require.NoError(t, err)
	assert.Contains(t, string(out), "Temporal dev server exited")
}
