# llmlb — see README.md. Every target works on a fresh machine with only the
# Rust toolchain and Python 3: what a target needs, it installs.

CARGO   ?= cargo
PROFILE ?= debug
PYTHON  ?= python3
# Caches the tests' third-party tools live in (scripts/test-deps.sh fills them once).
LLMLB_VENV ?= $(HOME)/.cache/llmlb-venv
LLMLB_NODE ?= $(HOME)/.cache/llmlb-node
export LLMLB_VENV LLMLB_NODE
# Where cargo puts the binaries: honours CARGO_TARGET_DIR and .cargo/config
# (evaluated only by the targets that use it).
TARGET_DIR = $(shell $(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

ifeq ($(PROFILE),release)
CARGO_PROFILE_FLAG := --release
endif

.PHONY: run build test test-deps lint fmt bench clean

## run: build, then start the control plane and one proxy on localhost (SQLite file ./llmlb.db)
run: build
	@scripts/run.sh "$(TARGET_DIR)/$(PROFILE)"

build:
	$(CARGO) build --workspace --bins $(CARGO_PROFILE_FLAG)

## test: the whole test suite (what .ci/run calls); the Python suite includes the
## conformance matrix with LiteLLM, mock-ai-api, openai-python, openai (Node) and LangChain
test: test-deps
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		PATH="$(LLMLB_VENV)/bin:$$PATH" $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		PATH="$(LLMLB_VENV)/bin:$$PATH" $(CARGO) test --workspace --no-fail-fast; \
	fi
	LLMLB_BIN_DIR="$(TARGET_DIR)/debug" "$(LLMLB_VENV)/bin/python" -m pytest -q testkit/python

## test-deps: what the tests call, installed once into $(LLMLB_VENV) and $(LLMLB_NODE):
## grpcurl, pytest, the OpenAI SDKs, LangChain, LiteLLM, mock-ai-api; chromium (Debian)
test-deps:
	@PYTHON=$(PYTHON) scripts/test-deps.sh

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
