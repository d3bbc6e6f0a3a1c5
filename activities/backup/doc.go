// Package backup is Holdfast's data plane: it moves a volume's bytes into backup storage and back.
//
// It owns the Store interface (the contract every backend passes, see storetest), the storage-neutral
// backup format (a 4 MiB chunk grid, chunks named by BLAKE3 content hash — an incremental stores only
// the blocks that changed in a cell and slices its parent's chunks for the rest, splice.go — zstd,
// optional AES-256-GCM, one manifest per backup written last and, in an encrypted store, authenticated by
// a MAC under the store key, everything under volumes/{volume_id}/), and the Engine that streams images:
// Backup (bounded parallel read → zero-skip → hash → dedup → compress → encrypt → upload, throttled,
// resumable from a journal checkpoint), Restore (fetch → verify → decompress → write, sparse-aware),
// Verify (scrub), Delete, GC (mark and sweep with a grace period), Abandon (a failed backup's compensation)
// and List (the disaster-recovery catalog). Backups, GCs and abandons of a volume coordinate through lock
// objects in the store itself (lock.go), so that they are safe whoever runs them, from any host.
//
// It must never talk to Temporal, the control plane or a volume driver: activities hand it an io.ReaderAt
// or io.WriterAt and pass its Progress into heartbeats. It must never make a backup visible before every
// chunk it lists is confirmed stored, never delete a chunk a manifest references or a running backup may
// reference, never log secrets or keys, and never hand out a manifest of an encrypted store that the store
// key does not authenticate.
package backup
