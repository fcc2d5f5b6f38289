# Strata: every command a developer or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# uv on PATH, else the checkout's own that `make setup` installs (deploy/local/setup.sh):
# a fresh shell needs nothing added to PATH. Decided once; `make UV=...` overrides it.
ifeq ($(origin UV),undefined)
UV := $(or $(shell command -v uv 2>/dev/null),.tools/uv/bin/uv)
endif
# uv trusts the machine's certificate store, as pip, curl and git do (a TLS proxy's CA).
export UV_SYSTEM_CERTS ?= true
STACK := $(UV) run --frozen strata stack
# The tests' own stack (tests/conftest.py): the first integration test session starts it
# and leaves it running; it records its settings in $(TEST_STACK)/env for `down`.
TEST_STACK := .stack-test

.PHONY: help setup demo stack-up stack-down stack-status test test-unit test-stack-down bench lint \
	format proto proto-check proto-lint

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## Install what a fresh machine lacks (Debian packages, uv, Python deps, Kafka jars, buf)
	bash deploy/local/setup.sh

demo: setup ## The delivery-time story end to end (examples/delivery_time): stack, services, report
	$(UV) run --frozen python examples/delivery_time/demo.py

stack-up: ## Start Kafka, Postgres, Redis and S3 on loopback; returns when each answers
	$(STACK) up

stack-down: test-stack-down ## Stop every server of the local stack and of the tests' stack
	$(STACK) down

stack-status: ## Show each server of the local stack and whether it answers
	$(STACK) status

test: ## Unit, integration and end-to-end tests; those on servers start a real stack of their own
	$(UV) run --frozen pytest

test-stack-down: ## Stop the tests' own stack, which `make test` leaves running
	@if [[ -f $(TEST_STACK)/env ]]; then \
		set -a && . ./$(TEST_STACK)/env && set +a && echo "the tests' stack:" && $(STACK) down; \
	fi

test-unit: ## Unit tests only (no servers needed)
	$(UV) run --frozen pytest tests/unit

bench: stack-up ## Bus, serving, dispatch, features and placement, each beside its peer; writes bench/results/
	$(UV) run --frozen python -m bench.bus
	$(UV) run --frozen python -m bench.serving
	$(UV) run --frozen python -m bench.dispatch
	$(UV) run --frozen python -m bench.features
	$(UV) run --frozen python -m bench.placement

lint: proto-check proto-lint ## ruff, mypy and the proto checks
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

format: ## Apply ruff's fixes and formatting
	$(UV) run --frozen ruff check --fix .
	$(UV) run --frozen ruff format .

proto: ## Regenerate libs/api from protos/
	$(UV) run --frozen python protos/generate.py

proto-check: ## Fail when libs/api differs from what protos/ generate
	$(UV) run --frozen python protos/generate.py --check

BUF := bin/buf
PROTO_BASE ?= main

proto-lint: ## buf lint and format of protos/, and no breaking change against main
	@test -x $(BUF) || { echo "$(BUF) is missing: run 'make setup'" >&2; exit 1; }
	$(BUF) lint protos
	$(BUF) format --diff --exit-code protos
	BUF=$(BUF) bash protos/breaking.sh $(PROTO_BASE)
