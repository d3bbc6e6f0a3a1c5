// Package deploy holds no Go code of its own: it is the home of Holdfast's production deployment
// (Kubernetes manifests, the hypervisor agent's systemd unit, the Dockerfile and a docker-compose stack),
// and its tests check those files against what the holdfast binary actually accepts.
package deploy
