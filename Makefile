# xdplb: `make demo` and `make test` work on a fresh Debian 12 machine (as root):
# each installs what is missing first.

CARGO ?= cargo
# Everything the build, the tests and the demo need from Debian.
APT_PACKAGES := clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config protobuf-compiler \
	gcc-multilib bpftool iproute2 ethtool netcat-openbsd curl python3 util-linux \
	prometheus

.PHONY: all deps build test unit integration demo bench fmt clean

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

# Unit and BPF_PROG_TEST_RUN tests, then the namespace tests (root needed for BPF and netns).
test: build
	@[ "$$(id -u)" = 0 ] || { echo "make test needs root (BPF, network namespaces)"; exit 1; }
	$(CARGO) test --workspace --exclude xdplb-integration
	$(CARGO) test -p xdplb-integration --tests -- --test-threads=1

demo: build
	@[ "$$(id -u)" = 0 ] || { echo "make demo needs root (XDP, network namespaces)"; exit 1; }
	bash scripts/demo.sh

bench: build
	bash scripts/bench.sh

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
