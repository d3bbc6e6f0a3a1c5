# A real Temporal cluster (cmd/holdfast/cluster_test.go, tests TestCluster*): temporal-server on a private
# PostgreSQL, with the configuration the compose stack runs (deploy/temporal/server.yaml), each service its own
# process — frontend, two history hosts, matching, worker — and real Holdfast processes on it. The cases: the
# lifecycle, a history host killed (kill -9) mid-backup, PostgreSQL restarted mid-backup. The cluster starts
# once per run, its schemas set up by temporal-sql-tool and the namespace and search attributes registered
# with bin/temporal as deploy/README.md tells operators. Server and schema tool are built from source through
# the Go module proxy (the server version the Temporal CLI's dev server embeds), cached per machine.
TEMPORAL_SERVER_VERSION := v1.29.1
CLUSTER_TIMEOUT         ?= 20m

APT_PACKAGES += postgresql
TOOLS        += bin/temporal-server bin/temporal-sql-tool

.PHONY: test-cluster
## test-cluster: only the Temporal cluster suite (PostgreSQL, 5 temporal-server processes, started once).
test-cluster: bin/temporal bin/temporal-server bin/temporal-sql-tool
	$(GO) test -count=1 -timeout $(CLUSTER_TIMEOUT) -run '^TestCluster' ./cmd/holdfast/
bin/temporal-server:
	@CGO_ENABLED=0 scripts/tool-module.sh temporal-server $(TEMPORAL_SERVER_VERSION) go.temporal.io/server ./cmd/server
bin/temporal-sql-tool:
	@CGO_ENABLED=0 scripts/tool-module.sh temporal-sql-tool $(TEMPORAL_SERVER_VERSION) go.temporal.io/server \
		./cmd/tools/sql
.PHONY: temporal-server temporal-sql-tool
temporal-server: bin/temporal-server
temporal-sql-tool: bin/temporal-sql-tool
