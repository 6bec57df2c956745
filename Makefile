# PVC — Private Virtual Cluster. See README.md.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
FUZZTIME ?= 3s
BENCHTIME ?= 1x

.PHONY: all deps build test unit e2e fuzz bench lab demo tour lint sweep clean

all: build

# Installs the Debian packages and Go modules the project needs (idempotent).
deps:
	@bash scripts/install-deps.sh

build:
	@mkdir -p bin
	$(GO) build -o bin/pvcd ./pvcd
	$(GO) build -o bin/pvc-broker ./broker
	$(GO) build -o bin/pvc-lab ./e2e/cmd/pvc-lab
	$(GO) build -o bin/pvc-certify ./certify/cmd/pvc-certify

# Everything: unit tests, lab tests (root), fuzz targets for $(FUZZTIME) each.
test: deps build
	@FUZZTIME=$(FUZZTIME) scripts/test.sh

# Unit tests only (no root needed; lab tests skip and say why).
unit:
	@FUZZTIME=0 PKGS="$$($(GO) list ./... | grep -v /e2e/)" scripts/test.sh

# The end-to-end tests in the network lab (root).
e2e: deps build
	@FUZZTIME=0 PKGS=./e2e/... scripts/test.sh

fuzz:
	@scripts/fuzz-all.sh $(FUZZTIME)

# Benchmarks (root for the lab ones). Figures are ratios against a
# reference measured in the same run; -p 1: one package at a time, so that
# no benchmark shares the machine with another (bench/dataplane takes
# ~15 min and writes bench/results/dataplane/). bench/certify is the saboteur
# simulation (the paper's Figure 8), written to bench/results/certify.
bench: deps build
	$(GO) test -p 1 -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 30m ./...

# Builds a lab (Internet, brokers' hosts, one site of every kind) and waits
# so that a person can enter its hosts; Ctrl-C tears it down.
lab: deps build
	bin/pvc-lab up

# The main job: a virtual cluster across NATed sites on this machine, with
# the real pvc-broker and pvcd; shown, then torn down (also on Ctrl-C).
demo: deps build
	bin/pvc-lab demo

# A tour of the lab: what every kind of site does to real traffic.
tour: deps build
	bin/pvc-lab tour

# Removes leftovers of lab runs whose process died (never touches live runs).
sweep: build
	bin/pvc-lab sweep

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if command -v staticcheck >/dev/null || $(GO) install honnef.co/go/tools/cmd/staticcheck@latest 2>/dev/null; then \
	  PATH="$$PATH:$$($(GO) env GOPATH)/bin" staticcheck ./...; \
	else echo "lint: staticcheck did not install; skipped"; fi

clean:
	rm -rf bin build
