package volume

import "golang.org/x/time/rate"

// HostConfig is what a hypervisor's configuration (hypervisors.<hypervisor_id>) gives the drivers it runs;
// each driver takes the settings it needs.
type HostConfig struct {
	// LibvirtURI is where domains are looked up: empty for the local system daemon, "none" for no libvirt
	// (volumes are then reported detached).
	LibvirtURI string
	// CephConf is the ceph.conf an RBD driver connects with.
	CephConf string
	// Limiter, when set, bounds the bytes per second a driver's copies move: the hypervisor's bandwidth limit,
	// shared with its backups and restores.
	Limiter *rate.Limiter
}
