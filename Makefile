# volsnap — build, test, demo. See README.md.

CARGO  ?= cargo
TARGET := x86_64-unknown-linux-gnu
STATIC := target/$(TARGET)/release/volsnap
PREFIX ?= /usr
DESTDIR ?=

.PHONY: all build static test lint unit install clean demo bench

all: build

build:
	$(CARGO) build --release

# A static-pie binary (glibc crt-static); unwinding stays on so a thaw
# guard's Drop runs on a panic.
static:
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release --target $(TARGET)
	@file $(STATIC) | grep -q 'static-pie linked' || { echo "not static: $$(file $(STATIC))"; exit 1; }
	@echo "$(STATIC): $$(stat -c %s $(STATIC)) bytes stripped ($$(( $$(stat -c %s $(STATIC)) / 1024 )) KiB)"

# The whole Cinder strategy in a minute, against the loopback cloud of
# tests/cloud (brought up if needed, left running: tests/cloud/down.sh stops
# it). Needs root. KEEP=1 keeps what it made and says how to remove it.
demo: build
	scripts/demo.sh

# volsnap's freeze window against the openstack CLI and the curl floor
# (results in bench/results/; see bench/RESULTS.md). BENCH_RUNS=N for N rounds.
bench: build
	bench/freeze-window --volsnap target/release/volsnap

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# What CI runs: lint, then every test (they need root, loop devices, and the
# services that scripts/test.sh starts and stops).
test:
	scripts/test.sh

install: static
	install -D -m 0755 $(STATIC) $(DESTDIR)$(PREFIX)/bin/volsnap
	install -d -m 0755 $(DESTDIR)$(PREFIX)/lib/volsnap/hooks
	for h in hooks/*; do [ -x "$$h" ] && install -m 0755 "$$h" $(DESTDIR)$(PREFIX)/lib/volsnap/hooks/; done; true
	install -D -m 0644 etc/volsnap.toml $(DESTDIR)/etc/volsnap/volsnap.toml.sample
	install -D -m 0644 packaging/systemd/volsnap.service $(DESTDIR)$(PREFIX)/lib/systemd/system/volsnap.service
	install -D -m 0644 packaging/systemd/volsnap.timer $(DESTDIR)$(PREFIX)/lib/systemd/system/volsnap.timer
	install -D -m 0755 etc/qemu-ga/volsnap $(DESTDIR)$(PREFIX)/share/volsnap/qemu-ga/fsfreeze-hook.d-volsnap
	install -D -m 0644 etc/qemu-ga/qemu-guest-agent.service.d-volsnap.conf $(DESTDIR)$(PREFIX)/share/volsnap/qemu-ga/qemu-guest-agent.service.d-volsnap.conf
	install -D -m 0644 etc/cloud-init.yaml $(DESTDIR)$(PREFIX)/share/volsnap/cloud-init.yaml

clean:
	$(CARGO) clean
