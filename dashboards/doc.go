// Package dashboards holds no Go code of its own: it is the home of Holdfast's Grafana dashboard
// (holdfast.json) and Prometheus alert rules (alerts.yml), and its tests keep them honest against the
// metrics activities/metrics actually exposes.
package dashboards
