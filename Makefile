# xdplb: `make demo` and `make test` work on a fresh Debian 12 machine (as root):
# each installs what is missing first.

CARGO ?= cargo
# Everything the build, the tests and the demo need from Debian.
APT_PACKAGES := clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config protobuf-compiler \
	gcc-multilib bpftool iproute2 ethtool netcat-openbsd curl python3 util-linux \
	prometheus python3-venv \
	wrk nginx haproxy nftables tcpdump

.PHONY: all deps build check layers upgrade-variant previous-release test unit integration demo bench fuzz fmt clean ansible-venv grpc-venv dist

all: build

# Idempotent: installs only the packages that are missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq $$missing >/dev/null || \
		{ apt-get update -qq --fix-missing && apt-get install -y -qq $$missing >/dev/null; }; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup)"; exit 1; }

build: deps
	$(CARGO) build --workspace --all-targets

# A second lbd whose XDP program is a genuinely different build (another program tag, same maps),
# for the upgrade tests (integration/tests/upgrade.rs); its own target dir leaves target/debug alone.
upgrade-variant: deps
	XDPLB_BPF_VARIANT=1 $(CARGO) build -p xdplb --bin lbd --target-dir target/upgrade-variant

# lbd of the previous release (the last commit with the v1 flow tables), for the upgrade test
# from its pinned maps to the v2 tables (integration/tests/upgrade.rs); built once, in its own dir.
PREVIOUS_RELEASE ?= 179c676
previous-release: deps
	bash scripts/build-previous.sh $(PREVIOUS_RELEASE) target/previous-release

# The quick tier (no root, no namespaces; .ci/run runs it before `make test`): the build, the
# crate layers, formatting, clippy with warnings as errors, and the tests that need no kernel
# (unit tests of every crate, lbctl's own tests against an in-process server).
check: build layers
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p lbctl

# Fails when a crate depends on one its layer forbids (docs/ARCHITECTURE.md, "Crates and arrows").
layers: deps
	bash scripts/check-layers.sh

# Unit and BPF_PROG_TEST_RUN tests, then the namespace tests (root needed for BPF and netns).
test: build layers ansible-venv grpc-venv upgrade-variant previous-release
	@[ "$$(id -u)" = 0 ] || { echo "make test needs root (BPF, network namespaces)"; exit 1; }
	$(CARGO) test --workspace --exclude xdplb-integration
	$(CARGO) test -p xdplb-integration --tests -- --test-threads=1

demo: build
	@[ "$$(id -u)" = 0 ] || { echo "make demo needs root (XDP, network namespaces)"; exit 1; }
	bash scripts/demo.sh

# Data-plane fuzzing (tests/fuzz.rs): FUZZ_PACKETS generated and mutated frames through the loaded
# lb and decap programs, stopped after FUZZ_SECONDS; prints the count and the verdict histogram.
FUZZ_PACKETS ?= 1000000
FUZZ_SECONDS ?= 1200
fuzz: build
	@[ "$$(id -u)" = 0 ] || { echo "make fuzz needs root (BPF, network namespaces)"; exit 1; }
	FUZZ_PACKETS=$(FUZZ_PACKETS) FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --test fuzz -- --nocapture

# Release build of lbd, lbctl and the bench, then the bench (root; bounded: under 10 minutes):
# writes bench/results/latest.md and PNG plots, prints the table. BENCH_ARGS=--quick for a look.
bench: deps
	bash scripts/bench.sh $(BENCH_ARGS)

# ansible-core from PyPI in a virtualenv, for integration/tests/ansible.rs (contrib/ansible).
ANSIBLE_VENV := .venv-ansible
ANSIBLE_CORE := ansible-core>=2.16,<2.20
ansible-venv: $(ANSIBLE_VENV)/bin/ansible-playbook
$(ANSIBLE_VENV)/bin/ansible-playbook: | deps
	/usr/bin/python3 -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/pip install -q '$(ANSIBLE_CORE)'

# Stock gRPC clients from PyPI in a virtualenv, for integration/tests/grpc_clients.rs: grpcio,
# grpcio-tools (stubs generated from proto/*.proto at test time), health checking, reflection.
GRPC_VENV := .venv-grpc
GRPC_PACKAGES := 'grpcio>=1.60,<2' 'grpcio-tools>=1.60,<2' 'grpcio-health-checking>=1.60,<2' \
	'grpcio-reflection>=1.60,<2'
grpc-venv: $(GRPC_VENV)/.installed
$(GRPC_VENV)/.installed: | deps
	/usr/bin/python3 -m venv $(GRPC_VENV)
	$(GRPC_VENV)/bin/pip install -q $(GRPC_PACKAGES)
	touch $@

# Packaging artefacts in dist/: release binaries, the systemd unit, an example config,
# man pages and shell completions generated from lbctl's clap definitions.
# DIST_PROFILE=dev packages the debug build (quicker, for checking the layout).
DIST := dist
DIST_PROFILE ?= release
dist: deps
	$(CARGO) build --profile $(DIST_PROFILE) -p xdplb -p lbctl -p xdplb-backend
	bash packaging/dist.sh target/$(if $(filter dev,$(DIST_PROFILE)),debug,$(DIST_PROFILE)) $(DIST)

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
