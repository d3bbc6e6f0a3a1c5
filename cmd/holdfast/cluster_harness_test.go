//go:build linux

package main

// The Temporal cluster the TestCluster* cases share: a private PostgreSQL, its schemas set up by
// temporal-sql-tool, and temporal-server with deploy/temporal/server.yaml — the compose stack's configuration —
// one service per process (frontend, two history hosts, matching, worker), the namespace and search
// attributes registered with the commands deploy/README.md gives operators. It starts once per test binary
// (starting it takes longer than most cases) and stops when every test has ended.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workflows"
)

// clusterNamespace is the namespace deploy/README.md registers (and the tests check it does).
const clusterNamespace = "holdfast"

// clusterStartLimit bounds each wait while the cluster starts: a loaded 2-core machine starts five server
// processes at once.
const clusterStartLimit = 3 * time.Minute

// temporalCluster is the running cluster.
type temporalCluster struct {
	dir      string
	bins     clusterBinaries
	postgres *child
	pgPort   int
	frontend string
	// services are the temporal-server processes by name (frontend, history-1, history-2, matching, worker),
	// each with its metrics address.
	services map[string]*child
	metrics  map[string]string
	// shards is server.yaml's numHistoryShards.
	shards int
}

// clusterBinaries are the programs the cluster runs, found before it starts.
type clusterBinaries struct {
	server, sqlTool, cli string
	// pgBin is PostgreSQL's bin directory (initdb, postgres, pg_isready).
	pgBin string
	// pgUser runs PostgreSQL when the tests run as root (it refuses to), nil otherwise.
	pgUser *syscall.Credential
}

var (
	clusterOnce   sync.Once
	sharedCluster *temporalCluster
	clusterErr    error
)

// clusterFor returns the run's cluster, started by the first test that asks for it. A missing binary skips
// the test (naming the make target that builds it), or fails it under CI=true; a cluster that does not start
// fails every test that needs it. When a test fails, every cluster process's log is put in its output.
func clusterFor(t *testing.T) *temporalCluster {
	t.Helper()
	bins := findClusterBinaries(t)
	clusterOnce.Do(func() {
		sharedCluster = &temporalCluster{bins: bins, services: map[string]*child{}, metrics: map[string]string{}}
		afterTests = append(afterTests, sharedCluster.stop)
		clusterErr = sharedCluster.start()
	})
	t.Cleanup(func() {
		if t.Failed() {
			sharedCluster.printLogs(t)
		}
	})
	if clusterErr != nil {
		t.Fatalf("Temporal cluster did not start: %v", clusterErr)
	}
	return sharedCluster
}

// target is what the Holdfast processes connect to.
func (c *temporalCluster) target() *temporalTarget {
	return &temporalTarget{address: c.frontend, namespace: clusterNamespace}
}

func findClusterBinaries(t *testing.T) clusterBinaries {
	b := clusterBinaries{server: toolPath(t, "temporal-server"), sqlTool: toolPath(t, "temporal-sql-tool"),
		cli: startertest.TemporalBin(t)}
	b.pgBin = os.Getenv("HOLDFAST_POSTGRES_BIN")
	if b.pgBin == "" {
		// Debian's layout: /usr/lib/postgresql/MAJOR/bin; the newest major installed.
		found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
		slices.SortFunc(found, func(a, b string) int { return pgMajor(a) - pgMajor(b) })
		if len(found) > 0 {
			b.pgBin = filepath.Dir(found[len(found)-1])
		}
	}
	if _, err := os.Stat(filepath.Join(b.pgBin, "postgres")); b.pgBin == "" || err != nil {
		needed(t, "PostgreSQL not found in /usr/lib/postgresql/*/bin (or $HOLDFAST_POSTGRES_BIN): make deps "+
			"(the Debian package postgresql)")
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			needed(t, "running as root and there is no user postgres to run PostgreSQL as: make deps")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		b.pgUser = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	return b
}

func pgMajor(binPath string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(binPath))))
	return n
}

// start brings the cluster up; on an error, whatever did start is stopped by stop (afterTests).
func (c *temporalCluster) start() error {
	var err error
	if c.dir, err = os.MkdirTemp("", "holdfast-cluster-"); err != nil {
		return err
	}
	// PostgreSQL, running as its own user, must reach its directories inside.
	if err := os.Chmod(c.dir, 0o755); err != nil {
		return err
	}
	if err := c.startPostgres(); err != nil {
		return fmt.Errorf("PostgreSQL: %w", err)
	}
	if err := c.setupSchemas(); err != nil {
		return fmt.Errorf("schemas: %w", err)
	}
	if err := c.startServices(); err != nil {
		return fmt.Errorf("temporal-server: %w", err)
	}
	if err := c.registerNamespace(); err != nil {
		return fmt.Errorf("namespace %s: %w", clusterNamespace, err)
	}
	return nil
}

// startPostgres creates a database cluster in the cluster's directory and starts it on its own port and
// socket directory. It is disposable, so fsync is off; stopping it (stopPostgres) is a clean shutdown all the
// same, which writes everything out.
func (c *temporalCluster) startPostgres() error {
	data, sock := filepath.Join(c.dir, "pgdata"), filepath.Join(c.dir, "pgsock")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
		if u := c.bins.pgUser; u != nil {
			if err := os.Chown(d, int(u.Uid), int(u.Gid)); err != nil {
				return err
			}
		}
	}
	initdb := c.child("initdb", filepath.Join(c.bins.pgBin, "initdb"), "-D", data, "-U", "temporal", "-A", "trust",
		"--no-locale", "-E", "UTF8", "--no-sync")
	initdb.cred = c.bins.pgUser
	if err := initdb.run(time.Minute); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	c.pgPort = port
	c.postgres = c.child("postgres", filepath.Join(c.bins.pgBin, "postgres"), "-D", data, "-p", strconv.Itoa(port),
		"-k", sock, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200")
	c.postgres.cred = c.bins.pgUser
	return c.restartPostgres()
}

// restartPostgres starts the (stopped) PostgreSQL on its data and port, and waits until it takes connections.
func (c *temporalCluster) restartPostgres() error {
	if err := c.postgres.start(); err != nil {
		return err
	}
	return waitUntil("PostgreSQL accepting connections", clusterStartLimit, func() error {
		if !c.postgres.running() {
			return errExited
		}
		return exec.Command(filepath.Join(c.bins.pgBin, "pg_isready"), "-q", "-h", "127.0.0.1",
			"-p", strconv.Itoa(c.pgPort)).Run()
	})
}

// stopPostgres shuts PostgreSQL down the way an operator's restart does (a fast shutdown: open transactions
// are rolled back, every client is disconnected) and waits for it to exit.
func (c *temporalCluster) stopPostgres() { c.postgres.stop(syscall.SIGINT, time.Minute) }

// setupSchemas creates Temporal's two databases and their schemas as the compose stack's temporal-schema
// service does: the schema files are the ones temporal-sql-tool embeds (the module's schema/postgresql/v12).
func (c *temporalCluster) setupSchemas() error {
	for _, db := range []struct{ name, schema string }{
		{"temporal", "postgresql/v12/temporal"},
		{"temporal_visibility", "postgresql/v12/visibility"},
	} {
		for _, step := range [][]string{
			{"create-database"},
			{"setup-schema", "-v", "0.0"},
			{"update-schema", "--schema-name", db.schema},
		} {
			args := append([]string{"--plugin", "postgres12", "--ep", "127.0.0.1", "-p", strconv.Itoa(c.pgPort),
				"-u", "temporal", "--pw", "temporal", "--db", db.name}, step...)
			if err := c.child("sql-tool", c.bins.sqlTool, args...).run(time.Minute); err != nil {
				return fmt.Errorf("%s %s: %w", db.name, step[0], err)
			}
		}
	}
	return nil
}

// clusterServices are the temporal-server processes: every service on its own, and two history hosts.
var clusterServices = []struct{ name, service string }{
	{"frontend", "frontend"}, {"history-1", "history"}, {"history-2", "history"}, {"matching", "matching"},
	{"worker", "worker"},
}

// startServices starts every temporal-server process with deploy/temporal/server.yaml, each with ports of
// its own through the file's environment, and waits until the frontend serves and both history hosts own
// shards.
func (c *temporalCluster) startServices() error {
	_, here, _, _ := runtime.Caller(0)
	configDir, err := filepath.Abs(filepath.Join(filepath.Dir(here), "..", "..", "deploy", "temporal"))
	if err != nil {
		return err
	}
	serverYAML, err := os.ReadFile(filepath.Join(configDir, "server.yaml"))
	if err != nil {
		return err
	}
	m := regexp.MustCompile(`(?m)^\s*numHistoryShards:\s*(\d+)\s*$`).FindSubmatch(serverYAML)
	if m == nil {
		return errors.New("deploy/temporal/server.yaml sets no numHistoryShards")
	}
	c.shards, _ = strconv.Atoi(string(m[1]))
	ports := map[string][3]int{} // grpc, membership, http
	for _, s := range clusterServices {
		var p [3]int
		for i := range p {
			if p[i], err = freePort(); err != nil {
				return err
			}
		}
		ports[s.name] = p
	}
	c.frontend = fmt.Sprintf("127.0.0.1:%d", ports["frontend"][0])
	for _, s := range clusterServices {
		metrics, err := freePort()
		if err != nil {
			return err
		}
		c.metrics[s.name] = fmt.Sprintf("127.0.0.1:%d", metrics)
		svc := strings.ToUpper(s.service)
		p := ports[s.name]
		proc := c.child(s.name, c.bins.server, "--root", "/", "--config", configDir, "--env", "server",
			"--allow-no-auth", "start", "--service", s.service)
		proc.env = []string{
			"TEMPORAL_DB_HOST=127.0.0.1", "TEMPORAL_DB_PORT=" + strconv.Itoa(c.pgPort),
			"TEMPORAL_DB_USER=temporal", "TEMPORAL_DB_PASSWORD=temporal",
			"TEMPORAL_BIND_ON_IP=127.0.0.1", "TEMPORAL_BROADCAST_ADDRESS=127.0.0.1",
			"TEMPORAL_FRONTEND_ADDRESS=" + c.frontend, "TEMPORAL_METRICS_ADDRESS=" + c.metrics[s.name],
			fmt.Sprintf("TEMPORAL_%s_GRPC_PORT=%d", svc, p[0]), fmt.Sprintf("TEMPORAL_%s_MEMBERSHIP_PORT=%d", svc, p[1]),
			fmt.Sprintf("TEMPORAL_FRONTEND_HTTP_PORT=%d", p[2]),
		}
		if err := proc.start(); err != nil {
			return err
		}
		c.services[s.name] = proc
		if s.name == "frontend" {
			// The first process on a new database writes the cluster's metadata; processes that start meanwhile
			// fail their own attempt (and exit). The frontend listens once the metadata is there.
			if err := waitUntil("frontend listening", clusterStartLimit, func() error {
				if !proc.running() {
					return errExited
				}
				conn, err := net.Dial("tcp", c.frontend)
				if err == nil {
					conn.Close()
				}
				return err
			}); err != nil {
				return err
			}
		}
	}
	if err := waitUntil("frontend serving at "+c.frontend, clusterStartLimit, func() error {
		if err := c.allRunning(); err != nil {
			return err
		}
		out, err := exec.Command(c.bins.cli, "operator", "cluster", "health", "--address", c.frontend).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "SERVING") {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}); err != nil {
		return err
	}
	for _, h := range []string{"history-1", "history-2"} {
		if err := c.waitOwnsShards(h); err != nil {
			return err
		}
	}
	// Each host owning some shards is not yet a settled ring: the first host to start took every shard and
	// hands the second its share for a few seconds more, and a request meanwhile can meet a shard in
	// handoff ("Shard is owned by ..."): a test's first registration failed so once. Settled: the hosts'
	// shards add up to the cluster's, three polls in a row.
	settled := 0
	return waitUntil("history shards settled", clusterStartLimit, func() error {
		n1, err1 := c.ownedShards("history-1")
		n2, err2 := c.ownedShards("history-2")
		if err := errors.Join(err1, err2); err != nil {
			settled = 0
			return err
		}
		if n1 == 0 || n2 == 0 || n1+n2 != c.shards {
			settled = 0
			return fmt.Errorf("history-1 owns %d shards, history-2 %d, of %d", n1, n2, c.shards)
		}
		if settled++; settled < 3 {
			return fmt.Errorf("settled for %d polls", settled)
		}
		return nil
	})
}

// waitOwnsShards waits until a history host owns shards: it has joined the ring and taken its share.
func (c *temporalCluster) waitOwnsShards(history string) error {
	return waitUntil(history+" owning shards", clusterStartLimit, func() error {
		if !c.services[history].running() {
			return errExited
		}
		n, err := c.ownedShards(history)
		if err == nil && n == 0 {
			err = errors.New("no shards yet")
		}
		return err
	})
}

// ownedShards is how many history shards a history host reports owning.
func (c *temporalCluster) ownedShards(history string) (int, error) {
	v, err := c.metric(history, "numshards_gauge{", "")
	return int(v), err
}

// metric reads the first sample of a server process's metrics whose line starts with prefix and contains
// label (e.g. `operation="DescribeWorkflowExecution"`); a missing sample reads as 0.
func (c *temporalCluster) metric(process, prefix, label string) (float64, error) {
	resp, err := http.Get("http://" + c.metrics[process] + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, prefix) && strings.Contains(line, label) {
			fields := strings.Fields(line)
			return strconv.ParseFloat(fields[len(fields)-1], 64)
		}
	}
	return 0, sc.Err()
}

// restartService starts a stopped (killed) server process again, on the same ports.
func (c *temporalCluster) restartService(name string) error { return c.services[name].start() }

// killService kills a server process with SIGKILL, as a crash of its host would.
func (c *temporalCluster) killService(name string) {
	c.services[name].stop(syscall.SIGKILL, time.Minute)
}

func (c *temporalCluster) allRunning() error {
	for name, p := range c.services {
		if !p.running() {
			return fmt.Errorf("%s: %w", name, errExited)
		}
	}
	return nil
}

// registerNamespace runs the namespace and search-attribute commands of deploy/README.md's "Temporal"
// section with bin/temporal (adding only --address), then waits until the frontend lists every search
// attribute the holdfast worker checks for at start.
func (c *temporalCluster) registerNamespace() error {
	cmds, err := readmeTemporalCommands()
	if err != nil {
		return err
	}
	for _, args := range cmds {
		args = append(args, "--address", c.frontend)
		if err := waitUntil("temporal "+strings.Join(args, " "), clusterStartLimit, func() error {
			out, err := exec.Command(c.bins.cli, args...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
			}
			return nil
		}); err != nil {
			return err
		}
	}
	tc, err := client.Dial(client.Options{HostPort: c.frontend, Namespace: clusterNamespace,
		Logger: startertest.QuietLogger{}})
	if err != nil {
		return err
	}
	defer tc.Close()
	if err := waitUntil("search attributes listed", clusterStartLimit, func() error {
		return workers.CheckSearchAttributes(context.Background(), tc, clusterNamespace)
	}); err != nil {
		return err
	}
	// Listed by the operator API is not yet known to the frontend's visibility queries (its namespace cache
	// refreshes on its own schedule): the API's first lists would fail for a few seconds.
	var terms []string
	for _, sa := range workflows.SearchAttributes {
		terms = append(terms, sa.Name+" = 'probe'")
	}
	return waitUntil("search attributes queryable", clusterStartLimit, func() error {
		_, err := tc.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{
			Namespace: clusterNamespace, Query: strings.Join(terms, " AND ")})
		return err
	})
}

// readmeTemporalCommands returns the `temporal operator ...` commands of deploy/README.md's section 1 (each
// as the CLI's arguments), checking they register the namespace and the search attributes on clusterNamespace.
func readmeTemporalCommands() ([][]string, error) {
	_, here, _, _ := runtime.Caller(0)
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(here), "..", "..", "deploy", "README.md"))
	if err != nil {
		return nil, err
	}
	_, section, ok := strings.Cut(string(raw), "\n## 1. Temporal")
	if !ok {
		return nil, errors.New(`deploy/README.md has no section "## 1. Temporal"`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var cmds [][]string
	creates := 0
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "temporal operator ") {
			continue
		}
		args := strings.Fields(line)[1:]
		if !slices.Contains(args, clusterNamespace) {
			return nil, fmt.Errorf("deploy/README.md: %q is not on namespace %s", line, clusterNamespace)
		}
		if slices.Equal(args[:3], []string{"operator", "namespace", "create"}) {
			creates++
		}
		cmds = append(cmds, args)
	}
	if creates != 1 || len(cmds) < 2 {
		return nil, fmt.Errorf("deploy/README.md section 1: %d namespace creations in %d commands", creates, len(cmds))
	}
	return cmds, nil
}

// stop ends every process (server processes first, PostgreSQL last) and removes the cluster's directory.
func (c *temporalCluster) stop() {
	for _, s := range slices.Backward(clusterServices) {
		if p := c.services[s.name]; p != nil {
			p.stop(syscall.SIGTERM, 20*time.Second)
		}
	}
	if c.postgres != nil {
		c.stopPostgres()
	}
	if c.dir != "" {
		_ = os.RemoveAll(c.dir)
	}
}

// printLogs puts every cluster process's log (its last 64 KiB) in a failed test's output.
func (c *temporalCluster) printLogs(t *testing.T) {
	names := []string{"initdb", "sql-tool", "postgres"}
	for _, s := range clusterServices {
		names = append(names, s.name)
	}
	for _, name := range names {
		path := filepath.Join(c.dir, name+".log")
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Logf("--- %s log: %v", name, err)
			continue
		}
		const most = 64 << 10
		if len(data) > most {
			data = append([]byte("[…]\n"), data[len(data)-most:]...)
		}
		t.Logf("--- cluster %s log (%s):\n%s", name, path, data)
	}
}

// child is one process of the cluster, its output appended to <cluster dir>/<name>.log across restarts.
type child struct {
	name, dir string
	argv      []string
	env       []string
	cred      *syscall.Credential
	cmd       *exec.Cmd
	exited    chan struct{}
}

var errExited = errors.New("process exited")

func (c *temporalCluster) child(name, path string, args ...string) *child {
	return &child{name: name, dir: c.dir, argv: append([]string{path}, args...)}
}

func (p *child) start() error {
	logf, err := os.OpenFile(filepath.Join(p.dir, p.name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a test binary killed at its timeout takes the cluster with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: %w", p.name, err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { _ = cmd.Wait(); logf.Close(); close(exited) }(p.exited)
	return nil
}

// run runs a one-shot process to its end, within limit.
func (p *child) run(limit time.Duration) error {
	if err := p.start(); err != nil {
		return err
	}
	select {
	case <-p.exited:
	case <-time.After(limit):
		p.stop(syscall.SIGKILL, time.Minute)
		return fmt.Errorf("%s did not finish within %s", p.name, limit)
	}
	if !p.cmd.ProcessState.Success() {
		return fmt.Errorf("%s %s: %s (see its log)", p.name, strings.Join(p.argv[1:], " "), p.cmd.ProcessState)
	}
	return nil
}

func (p *child) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends sig and waits at most limit for the process to exit before killing it.
func (p *child) stop(sig syscall.Signal, limit time.Duration) {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(limit):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}

// waitUntil polls cond until it returns nil, for at most limit; the error names what was awaited and
// cond's last answer.
func waitUntil(what string, limit time.Duration, cond func() error) error {
	end := time.Now().Add(limit)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, errExited) || time.Now().After(end) {
			return fmt.Errorf("%s: not within %s: %w", what, limit, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// freePort returns a free loopback port below 32768: Temporal keeps its processes' ports in the
// cluster_membership table as a smallint, and the kernel hands out ephemeral ports above it. It never
// returns a port twice: the ports are free only until their processes listen, and a repeated draw among
// the twenty or so a cluster needs (~1 % of runs) made one process fail on "address already in use".
func freePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := 10000 + rand.IntN(32768-10000)
		if portsGiven[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			l.Close()
			portsGiven[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no free port below 32768")
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// The cluster's ports are distinct: twenty-odd draws from ~22,800 ports repeat one about once in a hundred
// runs (CI saw it: history-1 could not bind its membership port), and 2,000 draws almost surely would.
func TestClusterPortsAreNeverGivenTwice(t *testing.T) {
	seen := map[int]bool{}
	for range 2000 {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d given twice", p)
		}
		seen[p] = true
	}
}
