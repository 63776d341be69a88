# Every target does its own set-up and is safe to run again.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Runtime: iproute2 nftables bird2 etcd. Tests and the lab: the rest (podman drives tabby-cni
# as a real runtime; gobgpd is an external BGP peer; clang/libbpf/bpftool build the IPIP BPF object,
# clang/libc6-dev the exec'd CNI client).
DEB_PACKAGES := iproute2 nftables bird2 etcd-server etcd-client iputils-ping netcat-openbsd \
	tcpdump iperf3 conntrack containernetworking-plugins podman busybox-static runc gobgpd \
	clang llvm libbpf-dev bpftool libc6-dev
STAMP_DEB := $(VENV)/.deb-stamp
STAMP_PIP := $(VENV)/.pip-stamp

.PHONY: setup test unit lint demo clean

setup: $(STAMP_DEB) $(STAMP_PIP)
	@# The IP-in-IP BPF object and the exec'd CNI client (built once; skipped when current).
	$(PY) -m tabby.dataplane.ipip.build
	$(PY) -m tabby.cni.client.build

$(STAMP_DEB):
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: need root to install:$$missing (run: sudo make setup)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

$(STAMP_PIP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# The README's main job: a 3-node lab on this machine, routing and policy shown, torn down.
# KEEP=1 leaves the lab up and prints how to explore and remove it.
demo: setup
	$(PY) -m tabby.lab.demo

# The whole suite takes ~5 min on 2 cores; the bound turns a hang (a child process or
# thread that keeps the interpreter alive) into a failure instead of a stalled CI.
TEST_BOUND ?= 40m
test: setup
	timeout --kill-after=30s $(TEST_BOUND) $(PY) -m pytest -q -p no:cacheprovider tests

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

lint: setup
	$(VENV)/bin/ruff check tabby tests bench

clean:
	rm -rf $(VENV) build *.egg-info
