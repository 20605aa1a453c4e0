# Strata: `make run` serves config/strata.yaml on 127.0.0.1:8080; `make test` runs every test.
# Both install what is missing first (scripts/setup.sh; caches in $STRATA_CACHE, default ~/.cache/strata).

SHELL := /bin/bash
STRATA_CACHE ?= $(HOME)/.cache/strata
export STRATA_CACHE
CONFIG ?= config/strata.yaml
SWIFT_JOBS ?= 2
PYTEST := $(STRATA_CACHE)/venv/bin/python -m pytest

.PHONY: run test setup build build-release unit-test integration-test bench-gateway clean

run: setup build-release
	.build/release/strata serve --config $(CONFIG)

test: setup build
	$(MAKE) unit-test
	$(MAKE) integration-test

setup:
	scripts/setup.sh

build:
	swift build --build-tests -j $(SWIFT_JOBS)

build-release:
	swift build -c release -j $(SWIFT_JOBS)

unit-test:
	swift test --skip-build --parallel --num-workers 2

integration-test:
	STRATA_BIN=$(CURDIR)/.build/debug/strata $(PYTEST) -q Tests/integration

bench-gateway: setup build-release
	$(STRATA_CACHE)/venv/bin/python Benchmarks/gateway/gateway_latency.py --strata .build/release/strata

clean:
	rm -rf .build var
