# The two commands a new user needs: `make run` and `make test`.
# Everything installs into .venv (Python) and .venv/bin (ghz) from pinned versions.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GHZ_VERSION := v0.120.0
GHZ := $(BIN)/ghz
# `make eval` runs every named dataset; EVAL_CSV=path/to/triage_with_age.csv runs that CSV instead,
# and EVAL_ARGS passes more options (--dataset nhamcs-test --output json --config step.resources=...).
EVAL_CSV ?=

# The code generators of buf.gen.yaml (stubs for other languages), pinned, and installed into
# .venv/bin by `make plugins` from the registries: the Go module proxy, Maven Central (protoc for
# Java's messages, protoc-gen-grpc-java) and npm (clients/typescript/package-lock.json).
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
PROTOC_VERSION := 4.36.2
GRPC_JAVA_VERSION := 1.83.1
MAVEN_CLASSIFIER := linux-$(shell uname -m | sed 's/aarch64/aarch_64/')
GO_PLUGINS := $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc
# The contract as last released: `buf breaking` (make lint) allows only compatible changes from it.
API_RELEASE := api-releases/v1.0.0.json

.PHONY: setup run web screenshots test lint proto plugins stubs go-example api-release bench topology soak chaos eval train lock clean promtool

setup: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml clients/web/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e clients/python -e clients/web -e '.[dev,train]'
	touch $(STAMP)

$(GHZ):
	GOBIN=$(CURDIR)/$(BIN) GOFLAGS=-mod=mod go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

# promtool checks and unit-tests deploy/prometheus/ (tests/deploy): Debian's prometheus package
# (no daemon is started); .ci/run installs it too.
promtool:
	@command -v promtool >/dev/null || { sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends prometheus; }

# `make run` migrates the embedded database (a no-op when it is current) and keeps a local
# admin key in .triage-dev-key (mode 0600), made once for the local database and secret,
# so that `triage` works out of the box.
DEV_KEY := .triage-dev-key

run: setup
	@$(BIN)/triage-server migrate
	@if [ ! -s $(DEV_KEY) ] || [ ! -f triage.db ] || [ ! -f triage-secret.key ]; then \
	  umask 077 && $(BIN)/triage-server keys create --name local-dev --role admin | tail -n 1 > $(DEV_KEY); \
	fi
	@echo "local admin key, for the triage command in another shell:"
	@echo "  export TRIAGE_API_KEY=\$$(cat $(CURDIR)/$(DEV_KEY))"
	$(BIN)/triage-server serve

# `make web` serves the demo page and the admin console (clients/web) on http://127.0.0.1:8080
# (TRIAGE_WEB_PORT) in front of the server of `make run`, started first in another shell. Its key
# with the gateway role is kept in .triage-web-key (mode 0600), made once as `make run` makes its own.
WEB_KEY := .triage-web-key

web: setup
	@$(BIN)/triage-server migrate
	@if [ ! -s $(WEB_KEY) ] || [ ! -f triage.db ] || [ ! -f triage-secret.key ]; then \
	  umask 077 && $(BIN)/triage-server keys create --name local-web --role gateway | tail -n 1 > $(WEB_KEY); \
	fi
	@echo "the demo at / and the admin console at /admin of the URL below (sign in with the key in $(DEV_KEY))"
	TRIAGE_WEB_API_KEY=$$(cat $(WEB_KEY)) $(BIN)/triage-web

test: setup $(GHZ) promtool $(GO_PLUGINS) go-example lint
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest

# The browser tests' screenshots of every page into docs/screenshots/, which the README shows
# (a plain test run writes them to build/screenshots/). Needs chromium and chromium-driver.
screenshots: setup
	TEST_SCREENSHOTS_DIR=docs/screenshots TEST_REQUIRE_BROWSER=1 $(BIN)/pytest tests/browser -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint
	$(BIN)/buf breaking --against $(API_RELEASE)

proto: setup
	$(BIN)/python clients/python/gen_protos.py

# `make stubs`: Go into clients/go (committed: Go code is fetched as source), Java into
# clients/java/gen and TypeScript into clients/typescript/gen, each where its example builds it.
stubs: plugins
	rm -rf clients/go/triage clients/java/gen clients/typescript/gen
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/buf generate
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/buf generate --template clients/typescript/buf.gen.yaml

plugins: $(GO_PLUGINS) $(BIN)/protoc $(BIN)/protoc-gen-grpc-java $(BIN)/protoc-gen-es

$(BIN)/protoc-gen-go: | $(STAMP)
	GOBIN=$(CURDIR)/$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(BIN)/protoc-gen-go-grpc: | $(STAMP)
	GOBIN=$(CURDIR)/$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

$(BIN)/protoc: | $(STAMP)
	mvn -q -B dependency:copy -Dartifact=com.google.protobuf:protoc:$(PROTOC_VERSION):exe:$(MAVEN_CLASSIFIER) \
	  -DoutputDirectory=$(BIN)/.maven
	install -m 755 $(BIN)/.maven/protoc-$(PROTOC_VERSION)-$(MAVEN_CLASSIFIER).exe $@

$(BIN)/protoc-gen-grpc-java: | $(STAMP)
	mvn -q -B dependency:copy -Dartifact=io.grpc:protoc-gen-grpc-java:$(GRPC_JAVA_VERSION):exe:$(MAVEN_CLASSIFIER) \
	  -DoutputDirectory=$(BIN)/.maven
	install -m 755 $(BIN)/.maven/protoc-gen-grpc-java-$(GRPC_JAVA_VERSION)-$(MAVEN_CLASSIFIER).exe $@

$(BIN)/protoc-gen-es: clients/typescript/package-lock.json | $(STAMP)
	npm ci --prefix clients/typescript --no-audit --no-fund
	ln -sf ../../clients/typescript/node_modules/.bin/protoc-gen-es $@

# Downloads the Go example's modules and compiles it once, so that its test
# (tests/e2e/test_go_client.py) builds from Go's caches in seconds.
go-example:
	cd clients/go && go mod download && go build -o /dev/null ./...

# Cuts an API release: `make api-release API_VERSION=v1.1.0`, then point API_RELEASE at it.
api-release: setup
	@test -n "$(API_VERSION)" || { echo "give the version: make api-release API_VERSION=v1.1.0"; exit 2; }
	$(BIN)/buf build --exclude-source-info -o api-releases/$(API_VERSION).json

bench: setup $(GHZ)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.run
	$(BIN)/python -m bench.learned_overhead

# Long runs on real components (bench/stack.py): PostgreSQL (.ci/start-postgres unless TEST_POSTGRES_URL
# is set), redis-server, nginx. `make test` runs a short version of each (tests/e2e/test_{topology,soak,chaos}.py).
# TOPOLOGY_SECONDS (30) the load around the kill, TOPOLOGY_BUDGET=1 adds the global-budget check across replicas;
# SOAK_SECONDS (600) sets the soak's length;
# CHAOS_FAULT_SECONDS (30) each fault's, CHAOS_FAULTS a subset (kill-worker redis-hang ...).
SOAK_SECONDS ?= 600
CHAOS_FAULTS ?=

topology: setup $(GHZ)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.topology

soak: setup $(GHZ)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS)

chaos: setup $(GHZ)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.chaos $(CHAOS_FAULTS)

eval: setup
	$(BIN)/triage-server evaluate $(if $(EVAL_CSV),--csv $(EVAL_CSV)) $(EVAL_ARGS)

# Refit the learned estimates on NHAMCS 2016-2018 and write server/learned/data/model.json
# (scikit-learn is in the `train` extra, which the dev setup installs; serving needs none of it).
# Then re-choose the thresholds in server/learned/data/policy.toml on the same years (make eval).
train: setup
	$(BIN)/python -m server.learned.train

# Re-pin every dependency to the newest versions that satisfy pyproject.toml.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e clients/python -e clients/web -e '.[dev,train]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache bench/results/*.json
