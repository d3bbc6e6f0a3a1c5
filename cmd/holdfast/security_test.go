package main

// The security suite (make test-security): every attack of issue 11 replayed as a hostile customer (or a
// careless panel) would, through the real API of real worker, agent and API processes. Each case checks
// the answer (a 4xx naming the field, nothing internal in it) and that nothing on disk changed.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/starter/startertest"
)

const (
	aliceToken = "alice-token"
	bobToken   = "bob-token"
)

// fileSums records the SHA-256 of files, to prove later that nothing touched them.
type fileSums map[string][sha256.Size]byte

func sums(t *testing.T, paths ...string) fileSums {
	out := fileSums{}
	for _, p := range paths {
		out[p] = sha256.Sum256(readFile(t, p))
	}
	return out
}

func (s fileSums) unchanged(t *testing.T) {
	t.Helper()
	for p, want := range s {
		got, err := os.ReadFile(p)
		require.NoError(t, err, "%s must still exist", p)
		assert.Equal(t, want, sha256.Sum256(got), "%s was modified", p)
	}
}

// requireRefused checks a 4xx answer of the given status whose message names field and carries nothing
// internal (no host path of the test's directory).
func (e *e2e) requireRefused(status int, out map[string]any, wantStatus int, field string) {
	e.t.Helper()
	requireRefusedIn(e.t, e.dir, status, out, wantStatus, field)
}

func requireRefusedIn(t *testing.T, dir string, status int, out map[string]any, wantStatus int, field string) {
	t.Helper()
	require.Equal(t, wantStatus, status, "%v", out)
	errBody, ok := out["error"].(map[string]any)
	require.True(t, ok, "typed error body: %v", out)
	msg, _ := errBody["message"].(string)
	if field != "" {
		assert.Contains(t, msg, field, "the message names the field")
	}
	assert.NotContains(t, msg, dir, "the message must not carry host paths")
}

// callAs sends a request with token, again while the volume's (1 s) cooldown refuses it, and returns the
// first other answer.
func (e *e2e) callAs(method, path, token string, body any) (int, map[string]any) {
	e.t.Helper()
	var status int
	var out map[string]any
	startertest.WaitFor(e.t, "past the cooldown: "+path, func() bool {
		status, out = e.call(method, path, token, body)
		return status != 429 || out["error"].(map[string]any)["type"] != "Cooldown"
	})
	return status, out
}

// TestSecurityOwnersCannotPlaceOrNameVolumes replays item 1, 3 and 4: a customer restoring "into" a
// neighbour's volume ID, file or directory, or choosing plan and hypervisor.
func TestSecurityOwnersCannotPlaceOrNameVolumes(t *testing.T) {
	e := newE2E(t, 0)
	makeVolume(t, e.volumePath("web-a"), 8<<20, 4<<20)
	bobData := makeVolume(t, e.volumePath("web-b"), 8<<20, 4<<20)
	e.register("web-a", "alice", "hv1")
	e.register("web-b", "bob", "hv1")
	untouched := sums(t, e.volumePath("web-a"))
	status, out := e.call("POST", "/v1/volumes/web-b/snapshots", bobToken, map[string]any{"name": "s"})
	require.Equal(t, 202, status, "%v", out)
	snapID := itemID(t, e.wait(out["operation_id"].(string)))

	restore := func(extra map[string]any) (int, map[string]any) {
		body := map[string]any{"snapshot_id": snapID, "mode": "new_volume"}
		for k, v := range extra {
			body[k] = v
		}
		return e.callAs("POST", "/v1/volumes/web-b/restore", bobToken, body)
	}
	// A neighbour's ID, an unknown one (no existence leak either way), a path, a plan, a hypervisor.
	for _, attack := range []struct {
		field string
		extra map[string]any
	}{
		{"new_volume_id", map[string]any{"new_volume_id": "web-a"}},
		{"new_volume_id", map[string]any{"new_volume_id": "never-existed"}},
		{"storage", map[string]any{"storage": map[string]any{"type": "file", "path": e.volumePath("web-a")}}},
		{"plan", map[string]any{"plan": "standard"}},
		{"hypervisor_id", map[string]any{"hypervisor_id": "hv2"}},
	} {
		status, out := restore(attack.extra)
		e.requireRefused(status, out, 400, attack.field)
		assert.NotContains(t, out["error"].(map[string]any)["message"], "exists", "no existence leak")
	}

	// What an owner may do: Holdfast chooses the ID and the file, in the hypervisor's root, owned by the
	// owner; the neighbour's file is untouched.
	status, out = restore(nil)
	require.Equal(t, 202, status, "%v", out)
	newID, _ := out["new_volume_id"].(string)
	require.NotEmpty(t, newID, "the 202 names the volume Holdfast chose: %v", out)
	assert.Equal(t, "completed", e.wait(out["operation_id"].(string))["status"])
	status, nv := e.call("GET", "/v1/volumes/"+newID, bobToken, nil)
	require.Equal(t, 200, status, "%v", nv)
	assert.Equal(t, "bob", nv["owner_id"])
	path := nv["storage"].(map[string]any)["path"].(string)
	assert.Equal(t, filepath.Join(e.dir, "volumes"), filepath.Dir(path))
	assert.True(t, strings.HasPrefix(filepath.Base(path), "holdfast-op-"), "a name no tenant chose: %s", path)
	assert.True(t, bytes.Equal(bobData, readFile(t, path)), "the restored volume holds the snapshot")
	untouched.unchanged(t)
	status, a := e.call("GET", "/v1/volumes/web-a", panelToken, nil)
	require.Equal(t, 200, status)
	assert.Equal(t, "alice", a["owner_id"], "the neighbour's volume keeps its owner")
}

// TestSecurityPanelRestoreNeverOverwritesOrDeletes replays item 1 for the panel: an explicit path onto a
// registered volume's file is refused; onto an unrelated existing file it fails without touching or
// deleting it, and the ID it had reserved is free again.
func TestSecurityPanelRestoreNeverOverwritesOrDeletes(t *testing.T) {
	e := newE2E(t, 0)
	makeVolume(t, e.volumePath("web-a"), 8<<20, 4<<20)
	makeVolume(t, e.volumePath("web-b"), 4<<20, 1<<20)
	unrelated := e.volumePath("unrelated")
	makeVolume(t, unrelated, 4<<20, 1<<20)
	e.register("web-a", "alice", "hv1")
	e.register("web-b", "bob", "hv1")
	untouched := sums(t, e.volumePath("web-a"), unrelated)
	snapID := itemID(t, e.operation("POST", "/v1/volumes/web-b/snapshots", map[string]any{"name": "s"}))

	status, out := e.callAs("POST", "/v1/volumes/web-b/restore", panelToken, map[string]any{"snapshot_id": snapID,
		"mode": "new_volume", "new_volume_id": "web-a"})
	e.requireRefused(status, out, 400, "new_volume_id")
	status, out = e.callAs("POST", "/v1/volumes/web-b/restore", panelToken, map[string]any{"snapshot_id": snapID,
		"mode": "new_volume", "new_volume_id": "copy",
		"storage": map[string]any{"type": "file", "path": e.volumePath("web-a")}})
	e.requireRefused(status, out, 400, "storage")

	// An existing file nobody registered: accepted (the panel may place volumes), then refused by the agent,
	// which creates targets exclusively; the compensation deletes nothing it did not create.
	op := e.operation("POST", "/v1/volumes/web-b/restore", map[string]any{"snapshot_id": snapID,
		"mode": "new_volume", "new_volume_id": "copy", "storage": map[string]any{"type": "file", "path": unrelated}})
	assert.Equal(t, "failed", op["status"], "%v", op)
	untouched.unchanged(t)
	// The volume's owner reads that it failed, not where the hypervisor's files are.
	status, owned := e.call("GET", "/v1/operations/"+op["operation_id"].(string), bobToken, nil)
	require.Equal(t, 200, status, "%v", owned)
	assert.NotContains(t, owned["error"].(map[string]any)["message"], e.dir, "an owner reads no host path")
	status, _ = e.call("GET", "/v1/volumes/copy", panelToken, nil)
	assert.Equal(t, 404, status, "a failed restore registers nothing")

	// Its ID and location were given back: the same ID restores fine now, where Holdfast places it.
	op = e.operation("POST", "/v1/volumes/web-b/restore", map[string]any{"snapshot_id": snapID,
		"mode": "new_volume", "new_volume_id": "copy"})
	assert.Equal(t, "completed", op["status"], "%v", op)
	untouched.unchanged(t)
}

// TestSecurityRestoreReservesItsNewVolumeID replays item 2: two concurrent restores to one new ID, and the
// panel registering that ID while the restore runs.
func TestSecurityRestoreReservesItsNewVolumeID(t *testing.T) {
	e := startE2E(t, e2eOptions{hv1Bandwidth: 2 << 20}) // a 16 MiB restore takes seconds
	for _, v := range []string{"src1", "src2"} {
		makeVolume(t, e.volumePath(v), 16<<20, 16<<20)
		e.register(v, "alice", "hv1")
	}
	// Backups, so that the restores stream through hv1's throttle and take seconds (a snapshot clone is a
	// local copy, too quick to race against).
	backups := map[string]string{}
	for _, v := range []string{"src1", "src2"} {
		backups[v] = itemID(t, e.operation("POST", "/v1/volumes/"+v+"/backups", map[string]any{"name": "b"}))
	}
	var wg sync.WaitGroup
	statuses := map[string]int{}
	var mu sync.Mutex
	for _, v := range []string{"src1", "src2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, out := e.callAs("POST", "/v1/volumes/"+v+"/restore", panelToken, map[string]any{
				"backup_id": backups[v], "mode": "new_volume", "new_volume_id": "twin"})
			mu.Lock()
			defer mu.Unlock()
			statuses[v] = status
			if status == 202 {
				statuses["op:"+out["operation_id"].(string)] = 1
			}
		}()
	}
	wg.Wait()
	accepted := 0
	var opID string
	for k, s := range statuses {
		if s == 202 {
			accepted++
		}
		if strings.HasPrefix(k, "op:") {
			opID = strings.TrimPrefix(k, "op:")
		}
	}
	require.Equal(t, 1, accepted, "exactly one restore takes the ID: %v", statuses)

	// The panel registering the ID while the restore runs is refused: the restore holds it.
	makeVolume(t, e.volumePath("other"), 4<<20, 1<<20)
	status, out := e.call("PUT", "/v1/volumes/twin", panelToken, map[string]any{"name": "twin",
		"owner_id": "bob", "hypervisor_id": "hv1", "plan": "standard",
		"storage": map[string]any{"type": "file", "path": e.volumePath("other")}})
	e.requireRefused(status, out, 400, "volume_id")
	_, running := e.call("GET", "/v1/operations/"+opID, panelToken, nil)
	require.Nil(t, running["finished_at"], "the registration must have raced a running restore: %v", running)
	assert.Equal(t, "completed", e.wait(opID)["status"])
	status, twin := e.call("GET", "/v1/volumes/twin", panelToken, nil)
	require.Equal(t, 200, status)
	assert.Equal(t, "alice", twin["owner_id"], "the restore's owner, not the late registration's")
	_, err := os.Stat(twin["storage"].(map[string]any)["path"].(string))
	require.NoError(t, err, "the registered volume's file exists")
}

// TestSecurityPlacementRules replays item 6: registrations the panel must not be able to make.
func TestSecurityPlacementRules(t *testing.T) {
	e := newE2E(t, 0)
	makeVolume(t, e.volumePath("web-a"), 4<<20, 1<<20)
	e.register("web-a", "alice", "hv1")
	root := filepath.Join(e.dir, "volumes")
	for _, c := range []struct {
		name, field string
		storage     map[string]any
		size        any
	}{
		{"host file", "storage.path", map[string]any{"type": "file", "path": "/etc/shadow"}, nil},
		{"device", "storage.path", map[string]any{"type": "file", "path": "/dev/null"}, nil},
		{"dot-dot", "storage.path", map[string]any{"type": "file", "path": root + "/../../x.img"}, nil},
		{"NUL", "storage.path", map[string]any{"type": "file", "path": root + "/a\x00.img"}, nil},
		{"prefix of a root", "storage.path", map[string]any{"type": "file", "path": root + "-evil/x.img"}, nil},
		{"hidden name", "storage.path", map[string]any{"type": "file", "path": root + "/.web-a.img.holdfast/x.img"}, nil},
		{"unknown extension", "storage.format", map[string]any{"type": "file", "path": root + "/disk"}, nil},
		{"rbd pool traversal", "storage.pool", map[string]any{"type": "rbd", "pool": "../x", "image": "a"}, nil},
		{"rbd pool not configured", "storage.pool", map[string]any{"type": "rbd", "pool": "other", "image": "a"}, nil},
		{"caller's created_by", "created_by", map[string]any{"type": "file", "path": root + "/n.img", "created_by": "op-x"}, nil},
		{"negative size", "size_bytes", map[string]any{"type": "file", "path": root + "/n.img"}, -1},
		{"another volume's file", "storage", map[string]any{"type": "file", "path": e.volumePath("web-a")}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := map[string]any{"name": "n", "owner_id": "bob", "hypervisor_id": "hv1", "plan": "standard",
				"storage": c.storage}
			if c.size != nil {
				body["size_bytes"] = c.size
			}
			status, out := e.call("PUT", "/v1/volumes/intruder", panelToken, body)
			requireRefusedIn(t, e.dir, status, out, 400, c.field)
		})
	}
	// What only the hypervisor can see: links, directories, a missing file, a qcow2 reading a host file.
	secret := filepath.Join(e.dir, "host-secret")
	require.NoError(t, os.WriteFile(secret, []byte("HOST-SECRET"), 0o600))
	require.NoError(t, os.Symlink(secret, filepath.Join(root, "link.img")))
	require.NoError(t, os.Mkdir(filepath.Join(root, "dir.img"), 0o755))
	require.NoError(t, os.Symlink(e.dir, filepath.Join(root, "up")))
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw",
		filepath.Join(root, "backed.qcow2"), "1M").CombinedOutput()
	require.NoError(t, err, "%s", out)
	for name, path := range map[string]string{"symlink to a host file": root + "/link.img",
		"directory": root + "/dir.img", "link below the root": root + "/up/host-secret.img",
		"missing file": root + "/nothing.img", "qcow2 with a host backing file": root + "/backed.qcow2"} {
		t.Run(name, func(t *testing.T) {
			status, out := e.call("PUT", "/v1/volumes/intruder", panelToken, map[string]any{"name": "n",
				"owner_id": "bob", "hypervisor_id": "hv1", "plan": "standard",
				"storage": map[string]any{"type": "file", "path": path}})
			requireRefusedIn(t, e.dir, status, out, 400, "storage")
		})
	}
	assert.Equal(t, []byte("HOST-SECRET"), readFile(t, secret))
	status, _ := e.call("GET", "/v1/volumes/intruder", panelToken, nil)
	assert.Equal(t, 404, status, "nothing was registered")
	for _, p := range []string{"/dev/.null.holdfast", "/etc/.shadow.holdfast", filepath.Join(e.dir, ".host-secret.holdfast")} {
		_, err := os.Stat(p)
		assert.ErrorIs(t, err, os.ErrNotExist, "%s must not exist", p)
	}
}

// TestSecurityGuestBytesNeverDecideTheFormat replays item 5: a raw volume whose guest wrote a qcow2 header
// with a backing file pointing at a host file. Snapshot, backup and restore treat it as the raw bytes it is.
func TestSecurityGuestBytesNeverDecideTheFormat(t *testing.T) {
	e := newE2E(t, 0)
	secret := filepath.Join(e.dir, "host-secret")
	secretData := bytes.Repeat([]byte("HOST-SECRET!"), 1<<16)
	require.NoError(t, os.WriteFile(secret, secretData, 0o600))
	// The header a guest would write: a real qcow2 image's first cluster, whose backing file is the secret.
	header := filepath.Join(e.dir, "header.qcow2")
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", header,
		"8M").CombinedOutput()
	require.NoError(t, err, "%s", out)
	hdr := readFile(t, header)
	vol := e.volumePath("guest")
	raw := make([]byte, 8<<20)
	copy(raw, hdr)
	require.NoError(t, os.WriteFile(vol, raw, 0o600))
	e.register("guest", "bob", "hv1")

	snapID := itemID(t, e.operation("POST", "/v1/volumes/guest/snapshots", map[string]any{"name": "s"}))
	backupID := itemID(t, e.operation("POST", "/v1/volumes/guest/backups", map[string]any{"name": "b"}))
	for i, src := range []map[string]any{{"snapshot_id": snapID}, {"backup_id": backupID}} {
		src["mode"], src["new_volume_id"] = "new_volume", fmt.Sprintf("guest-copy-%d", i)
		status, acc := e.callAs("POST", "/v1/volumes/guest/restore", panelToken, src)
		require.Equal(t, 202, status, "%v", acc)
		op := e.wait(acc["operation_id"].(string))
		require.Equal(t, "completed", op["status"], "%v", op)
		_, nv := e.call("GET", "/v1/volumes/"+src["new_volume_id"].(string), panelToken, nil)
		got := readFile(t, nv["storage"].(map[string]any)["path"].(string))
		if nv["storage"].(map[string]any)["format"] == "qcow2" {
			t.Fatalf("a raw volume's copy must stay raw: %v", nv["storage"])
		}
		require.Equal(t, len(raw), len(got), "the copy has the raw file's size, not the header's")
		assert.True(t, bytes.Equal(raw, got), "the copy holds exactly the raw bytes the guest wrote")
		assert.False(t, bytes.Contains(got, secretData[:4096]), "the host file was read through the header")
	}
	_, v := e.call("GET", "/v1/volumes/guest", panelToken, nil)
	assert.Equal(t, float64(len(raw)), v["size_bytes"], "the volume's size is the raw file's")
}
