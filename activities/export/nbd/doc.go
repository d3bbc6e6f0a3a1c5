// Package nbd is a read-only Network Block Device server (the fixed-newstyle protocol QEMU's NBD client
// speaks, NetworkBlockDevice/nbd doc/proto.md): it serves named exports, each an io.ReaderAt of a fixed
// size, over any net.Listener (unix socket or TCP). It is the first building block of instant restore: a
// backup served straight from the backup store becomes the backing file of a qcow2 overlay
// (qemu-img create -f qcow2 -F raw -b 'nbd+unix:///NAME?socket=PATH'), so a VM boots before its restore
// has copied anything.
//
// It owns the wire protocol only: the handshake (NBD_OPT_EXPORT_NAME, _GO, _INFO, _LIST, _ABORT,
// _STRUCTURED_REPLY, _LIST_META_CONTEXT and _SET_META_CONTEXT for "base:allocation"), and the transmission
// phase (READ, BLOCK_STATUS, DISC, FLUSH as a no-op; every write command is refused with EPERM). Which
// backup an export serves, and how its bytes are fetched, decrypted and cached, belongs to the caller.
//
// It must never write to an export or let a client change what it serves, never trust what a client sends
// (every length is bounded before anything is allocated, a malformed message ends that connection and no
// other), never let one client's failed read end its other requests, and never log the data it serves.
package nbd
