# Operations: dashboards/ (Grafana, Prometheus alert rules) and deploy/ (Kubernetes, systemd, compose).
# Their tests (go test ./dashboards ./deploy) use promtool and kubeconform, provided here.
KUBECONFORM_VERSION   := v0.7.0
# Kubernetes release whose OpenAPI document the manifests are validated against (k8s.io/kubernetes module).
KUBE_SCHEMA_VERSION   := 1.31.4

APT_PACKAGES += prometheus
TOOLS        += bin/kubeconform bin/kubernetes-schemas/v$(KUBE_SCHEMA_VERSION)-standalone-strict

.PHONY: kubeconform check-ops
kubeconform: bin/kubeconform
bin/kubeconform:
	@scripts/tool.sh kubeconform $(KUBECONFORM_VERSION) github.com/yannh/kubeconform/cmd/kubeconform

# kubeconform would download its schemas from GitHub; generate them offline from the Kubernetes source
# that the Go module proxy serves instead (deploy/kubeschema).
bin/kubernetes-schemas/v$(KUBE_SCHEMA_VERSION)-standalone-strict:
	$(GO) run ./deploy/kubeschema -kubernetes-version $(KUBE_SCHEMA_VERSION) -out bin/kubernetes-schemas

## check-ops: only the dashboards/alerts and deploy checks (fast; `make test` runs them too).
check-ops: bin/kubeconform bin/kubernetes-schemas/v$(KUBE_SCHEMA_VERSION)-standalone-strict
	$(GO) test -count=1 ./dashboards/... ./deploy/...
