# Latchkey: `make run` starts everything, `make test` tests everything.
# Every target installs what it needs first and is safe to run again.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

STATE      := .state
UV_VERSION := 0.13.8
UV_HOME    := $(STATE)/tools/uv
UV         := $(UV_HOME)/bin/uv
VENV       := .venv
PY         := $(VENV)/bin/python
LATCHKEY   := $(VENV)/bin/latchkey
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export LATCHKEY_STATE_DIR ?= $(abspath $(STATE)/dev)

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# ---- set-up ---------------------------------------------------------------
$(STATE)/system-deps.stamp: scripts/system-deps.sh
	@mkdir -p $(STATE)
	scripts/system-deps.sh
	@touch $@

$(UV):
	@mkdir -p $(STATE)/tools
	python3 -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet
	@touch $@

gen/.stamp: $(wildcard protos/latchkey/*/v1/*.proto) scripts/proto.sh $(VENV)/.synced
	scripts/proto.sh
	@touch $@

# The local CQL engine (Apache Cassandra, version pinned in the pom) from Maven Central, fetched once.
CQL_JARS := $(STATE)/tools/cassandra
$(CQL_JARS)/.stamp: tools/cassandra/pom.xml | $(STATE)/system-deps.stamp
	rm -rf $(CQL_JARS)
	mvn -q -B -f tools/cassandra/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
	  -DoutputDirectory=$(abspath $(CQL_JARS))
	@touch $@

# buf (lint, breaking, and `buf curl`, the gRPC client the README and `make run` show), pinned in tools/buf.
BUF := tools/buf/node_modules/.bin/buf
$(BUF): tools/buf/package-lock.json | $(STATE)/system-deps.stamp
	npm ci --prefix tools/buf --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: setup
setup: $(STATE)/system-deps.stamp $(VENV)/.synced gen/.stamp $(CQL_JARS)/.stamp $(BUF) ## install everything (apt, Python env, generated code, CQL engine, buf)

.PHONY: proto
proto: $(VENV)/.synced ## generate Python code from protos/ into gen/
	scripts/proto.sh
	@touch gen/.stamp

.PHONY: certs
certs: setup ## create the development CA and service certificates (idempotent)
	$(LATCHKEY) certs init

# ---- the local stack --------------------------------------------------------
# CQL=1: the unlock view and the audit log live in the local CQL engine (Apache
# Cassandra 5.0, the same CQL and driver as ScyllaDB) instead of the embedded stores.
CQL ?= 0
CQL_FLAG := $(if $(filter 1 yes true,$(CQL)),--cql,--no-cql)

.PHONY: stack-up stack-down stack-status
stack-up: setup ## start PostgreSQL, Redis and NATS JetStream (CQL=1: and the CQL engine) under .state/dev
	$(LATCHKEY) stack up $(CQL_FLAG)
stack-down: setup ## stop the local stack
	$(LATCHKEY) stack down
stack-status: setup ## show the local stack
	$(LATCHKEY) stack status

# ---- the two commands -----------------------------------------------------
.PHONY: run
run: setup certs stack-up ## start the stack and all three services (CQL=1: on the CQL engine; Ctrl-C stops them)
	$(LATCHKEY) migrate
	$(LATCHKEY) run

.PHONY: test
test: setup lint k8s-check ## run the whole test suite against a private stack
	$(VENV)/bin/pytest

# ---- checks and measurements ----------------------------------------------
.PHONY: lint
lint: setup ## buf lint on the contract, ruff and mypy on the code
	scripts/buf-lint.sh
	$(VENV)/bin/ruff check latchkit access_rules ops devstack services tests bench chaos
	$(VENV)/bin/mypy

.PHONY: k8s-check
k8s-check: setup ## render deploy/k8s overlays, validate them, policy-scan them and the Dockerfile
	scripts/k8s-check.sh

.PHONY: fuzz
fuzz: setup ## the fuzz suite with a large budget (400 inputs per RPC)
	LATCHKEY_FUZZ_EXAMPLES=$${LATCHKEY_FUZZ_EXAMPLES:-400} $(VENV)/bin/pytest tests/e2e/test_fuzz.py -s

.PHONY: bench
bench: setup ## latency/throughput benchmark; prints a table, writes bench-results/*.json
	$(PY) -m bench

.PHONY: chaos
chaos: setup ## fault suite: kills and hangs each component under load, checks invariants (ROUNDS=3)
	$(PY) -m chaos --rounds $${ROUNDS:-3}

.PHONY: clean
clean: ## stop the stack and remove generated state
	-$(LATCHKEY) stack down
	rm -rf $(STATE) gen
