package workflows

import (
	"sort"
	"strings"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

// Disaster recovery and storage upkeep: off-site replication of each backup (ReplicateWorkflow), the catalog
// rebuild that lets a fresh control plane find every backup a storage holds (RecoverWorkflow), and the
// storage-wide scrub and garbage collection. Their activities run on storage queues
// (activities.StorageTaskQueue), served by every agent configured with the storage, so none of this waits on
// any one host.

// UpdateImportBackups adds backups found in storage to a volume's catalog (ImportRequest → ImportResult).
const UpdateImportBackups = "import_backups"

// RecoverVolumeActivity is the control-plane activity (task queue TaskQueue) that registers one volume found
// in a storage, if it is unknown, and imports its backups (input RecoverVolumeInput).
const RecoverVolumeActivity = "RecoverVolume"

// ReplicateWorkflowID is the ID of a backup's replication.
func ReplicateWorkflowID(volumeID, backupID string) string {
	return "replicate/" + volumeID + "/" + backupID
}

// RecoverWorkflowID is the ID of a storage's catalog rebuild: one at a time per storage.
func RecoverWorkflowID(storage string) string { return "recover/" + storage }

// ReplicateRequest copies one backup from storage From to storage To, for at most Timeout.
type ReplicateRequest struct {
	VolumeID string        `json:"volume_id"`
	BackupID string        `json:"backup_id"`
	From     string        `json:"from"`
	To       string        `json:"to"`
	Timeout  time.Duration `json:"timeout"`
}

// ReplicateWorkflow copies a backup to its replica storage (chunks, then the manifest, then a verification of
// the copy) and returns the replica's state. Idempotent: chunks already there are not copied again.
func ReplicateWorkflow(ctx workflow.Context, in ReplicateRequest) (Replica, error) {
	var r activities.ReplicateResult
	err := workflow.ExecuteActivity(onStorage(ctx, in.From, in.Timeout, true), activities.ReplicateBackupName,
		activities.ReplicateInput{VolumeID: in.VolumeID, BackupID: in.BackupID, From: in.From, To: in.To}).Get(ctx, &r)
	if err != nil {
		return Replica{}, err
	}
	if !r.Verified {
		return Replica{}, errInvalid("replica of backup %s in %s did not verify", in.BackupID, in.To)
	}
	now := workflow.Now(ctx)
	workflow.GetLogger(ctx).Info("backup replicated", "volume_id", in.VolumeID, "backup_id", in.BackupID,
		"replica", in.To, "chunks_copied", r.ChunksCopied, "bytes_copied", r.BytesCopied)
	return Replica{Storage: in.To, Status: ReplicaReplicated, ReplicatedAt: &now, BytesCopied: r.BytesCopied}, nil
}

// ImportRequest adds backups (found in storage) to a volume's catalog.
type ImportRequest struct {
	Backups []Item `json:"backups"`
}

// ImportResult says how many backups were new to the volume and how many it already knew.
type ImportResult struct {
	Imported int `json:"imported"`
	Known    int `json:"known"`
}

func (v *volume) validateImport(ctx workflow.Context, req ImportRequest) error {
	if !v.st.Registered {
		return errNotFound("Volume %s not found.", v.volumeID)
	}
	for _, it := range req.Backups {
		switch {
		case !activities.ValidID(it.ItemID):
			return errInvalid("backup_id: must match %s", activities.IDPattern)
		case it.Status != StatusAvailable:
			return errInvalid("backups: %s must be available, not %s", it.ItemID, it.Status)
		case it.Storage == "":
			return errInvalid("backups: %s names no storage", it.ItemID)
		}
	}
	return nil
}

// importBackups merges found backups into the catalog: a backup the volume already lists (whatever its
// state, in whichever storage) is left as it is, so importing twice changes nothing. The plan cap is not
// applied: recovered backups are the customer's data, and the cap only stops new ones.
func (v *volume) importBackups(ctx workflow.Context, req ImportRequest) (ImportResult, error) {
	if err := v.validateImport(ctx, req); err != nil {
		return ImportResult{}, err
	}
	var res ImportResult
	now := workflow.Now(ctx)
	for _, it := range req.Backups {
		if _, err := v.item(KindBackup, it.ItemID); err == nil {
			res.Known++
			continue
		}
		// Billed by this control plane from the hour it learnt of it: earlier hours were the old site's.
		it.Recovered, it.AvailableAt = true, &now
		v.st.Backups = append(v.st.Backups, it)
		res.Imported++
	}
	sort.SliceStable(v.st.Backups, func(i, j int) bool { return v.st.Backups[i].CreatedAt.Before(v.st.Backups[j].CreatedAt) })
	if res.Imported > 0 {
		metricsRetained(ctx, v)
		workflow.GetLogger(ctx).Info("backups imported", "volume_id", v.volumeID, "imported", res.Imported,
			"known", res.Known)
	}
	return res, nil
}

// RecoverInput rebuilds the catalog of one storage. FallbackHypervisor registers volumes whose hypervisor is
// no longer configured (the site that burned) on another one; After and Result carry a rebuild across
// continue-as-new.
type RecoverInput struct {
	Storage            string         `json:"storage"`
	FallbackHypervisor string         `json:"fallback_hypervisor,omitempty"`
	After              string         `json:"after,omitempty"`
	Result             *RecoverResult `json:"result,omitempty"`
	// LastVolumeID is the last volume of the previous page: when the next page starts with it, it is not
	// counted again.
	LastVolumeID string `json:"last_volume_id,omitempty"`
}

// RecoverVolumeInput is one volume found in a storage: its backups, newest last.
type RecoverVolumeInput struct {
	Storage            string                    `json:"storage"`
	VolumeID           string                    `json:"volume_id"`
	FallbackHypervisor string                    `json:"fallback_hypervisor,omitempty"`
	Backups            []activities.CatalogEntry `json:"backups"`
}

// RecoverVolumeResult says what recovering one volume did.
type RecoverVolumeResult struct {
	Registered bool   `json:"registered"`
	Imported   int    `json:"imported"`
	Known      int    `json:"known"`
	Skipped    string `json:"skipped,omitempty"`
}

// RecoverProblem is a volume or backup the rebuild could not bring back, and why.
type RecoverProblem struct {
	VolumeID string `json:"volume_id"`
	BackupID string `json:"backup_id,omitempty"`
	Error    string `json:"error"`
}

// RecoverResult is a catalog rebuild's report.
type RecoverResult struct {
	Storage    string           `json:"storage"`
	Manifests  int              `json:"manifests"`
	Volumes    int              `json:"volumes"`
	Registered int              `json:"registered"`
	Imported   int              `json:"imported"`
	Known      int              `json:"known"`
	Problems   []RecoverProblem `json:"problems,omitempty"`
	// ProblemsOmitted counts problems beyond the ones listed (the list is bounded).
	ProblemsOmitted int `json:"problems_omitted,omitempty"`
}

const (
	keepRecoverProblems = 100
	recoverParallelism  = 8
)

func (r *RecoverResult) problem(p RecoverProblem) {
	if len(r.Problems) < keepRecoverProblems {
		r.Problems = append(r.Problems, p)
	} else {
		r.ProblemsOmitted++
	}
}

// RecoverWorkflow lists every manifest in a storage, page by page, and for each volume found registers it
// (from its manifests' labels) when the control plane does not know it, then imports its backups as
// available. Idempotent: a second run registers and imports nothing new.
func RecoverWorkflow(ctx workflow.Context, in RecoverInput) (RecoverResult, error) {
	res := RecoverResult{Storage: in.Storage}
	if in.Result != nil {
		res = *in.Result
	}
	after, last := in.After, in.LastVolumeID
	for {
		var page activities.CatalogPage
		if err := workflow.ExecuteActivity(onStorage(ctx, in.Storage, shortActivityTimeout, false),
			activities.ListCatalogName, activities.CatalogInput{Storage: in.Storage, After: after}).Get(ctx, &page); err != nil {
			return res, err
		}
		res.Manifests += len(page.Entries)
		for _, p := range page.Problems {
			res.problem(RecoverProblem{VolumeID: p.VolumeID, BackupID: p.BackupID, Error: p.Error})
		}
		recoverVolumes(ctx, in, groupByVolume(page.Entries), last, &res)
		if n := len(page.Entries); n > 0 {
			last = page.Entries[n-1].VolumeID
		}
		if page.Next == "" {
			workflow.GetLogger(ctx).Info("catalog rebuilt", "storage", in.Storage, "manifests", res.Manifests,
				"volumes", res.Volumes, "registered", res.Registered, "imported", res.Imported)
			return res, nil
		}
		after = page.Next
		if workflow.GetInfo(ctx).GetContinueAsNewSuggested() {
			return res, workflow.NewContinueAsNewError(ctx, RecoverWorkflow, RecoverInput{Storage: in.Storage,
				FallbackHypervisor: in.FallbackHypervisor, After: after, Result: &res, LastVolumeID: last})
		}
	}
}

// groupByVolume splits a catalog page (ordered by volume) into one input per volume.
func groupByVolume(entries []activities.CatalogEntry) [][]activities.CatalogEntry {
	var out [][]activities.CatalogEntry
	for i, e := range entries {
		if i == 0 || entries[i-1].VolumeID != e.VolumeID {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], e)
	}
	return out
}

// recoverVolumes runs RecoverVolume for each volume of a page, recoverParallelism at a time. A volume that
// appears on two pages (the previous page ended with lastVolumeID) is recovered twice, counted once; the
// second import finds its first backups known.
func recoverVolumes(ctx workflow.Context, in RecoverInput, volumes [][]activities.CatalogEntry, lastVolumeID string,
	res *RecoverResult) {
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{TaskQueue: TaskQueue,
		StartToCloseTimeout: time.Minute, ScheduleToCloseTimeout: 10 * time.Minute, RetryPolicy: retryPolicy()})
	for start := 0; start < len(volumes); start += recoverParallelism {
		batch := volumes[start:min(start+recoverParallelism, len(volumes))]
		futures := make([]workflow.Future, len(batch))
		for i, backups := range batch {
			sortByCreation(backups)
			futures[i] = workflow.ExecuteActivity(actx, RecoverVolumeActivity, RecoverVolumeInput{Storage: in.Storage,
				VolumeID: backups[0].VolumeID, FallbackHypervisor: in.FallbackHypervisor, Backups: backups})
		}
		for i, f := range futures {
			var r RecoverVolumeResult
			volumeID := batch[i][0].VolumeID
			if err := f.Get(ctx, &r); err != nil {
				res.problem(RecoverProblem{VolumeID: volumeID, Error: rootMessage(err)})
				continue
			}
			if r.Skipped != "" {
				res.problem(RecoverProblem{VolumeID: volumeID, Error: r.Skipped})
				continue
			}
			if volumeID != lastVolumeID {
				res.Volumes++
			}
			res.Imported += r.Imported
			res.Known += r.Known
			if r.Registered {
				res.Registered++
			}
		}
	}
}

func sortByCreation(entries []activities.CatalogEntry) {
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].CreatedAt.Before(entries[j].CreatedAt) })
}

// RecoveredItem turns a catalog entry into the backup item a volume lists.
func RecoveredItem(storage string, e activities.CatalogEntry) Item {
	it := Item{ItemID: e.BackupID, Name: e.Labels[activities.LabelItemName], Status: StatusAvailable,
		CreatedAt: e.CreatedAt, SizeBytes: e.SizeBytes, StoredBytes: e.StoredBytes, Storage: storage,
		Consistency: e.Labels[activities.LabelConsistency], Scheduled: e.Labels[activities.LabelScheduled] == "true",
		OperationID: e.Labels[activities.LabelOperationID], Recovered: true}
	if strings.TrimSpace(it.Name) == "" || len(it.Name) > maxNameLength {
		it.Name = e.BackupID
	}
	return it
}

// StorageJob is a scrub or a garbage collection of one storage (of one volume when VolumeID is set).
type StorageJob struct {
	Storage  string        `json:"storage"`
	VolumeID string        `json:"volume_id,omitempty"`
	Grace    time.Duration `json:"grace,omitempty"`
}

// storageJobTimeout bounds a scrub or collection of a whole storage.
const storageJobTimeout = 12 * time.Hour

// ScrubWorkflow reads and checks every chunk of every backup of a storage on any agent that has it; damage is
// in the report (the workflow succeeds), so operators see every damaged backup at once.
func ScrubWorkflow(ctx workflow.Context, in StorageJob) (activities.ScrubResult, error) {
	var r activities.ScrubResult
	err := workflow.ExecuteActivity(onStorage(ctx, in.Storage, storageJobTimeout, true), activities.ScrubStorageName,
		activities.ScrubInput{Storage: in.Storage, VolumeID: in.VolumeID}).Get(ctx, &r)
	return r, err
}

// CollectGarbageWorkflow removes the chunks no backup of a storage references, older than the grace.
func CollectGarbageWorkflow(ctx workflow.Context, in StorageJob) (activities.GCResult, error) {
	var r activities.GCResult
	err := workflow.ExecuteActivity(onStorage(ctx, in.Storage, storageJobTimeout, true), activities.CollectGarbageName,
		activities.GCInput{Storage: in.Storage, VolumeID: in.VolumeID, Grace: in.Grace}).Get(ctx, &r)
	return r, err
}
