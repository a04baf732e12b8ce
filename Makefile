# volsnap — build, test, demo. See README.md.

CARGO  ?= cargo
TARGET := x86_64-unknown-linux-gnu
STATIC := target/$(TARGET)/release/volsnap
# The static binary's size budget (6 MiB): over it, `make static` fails, and
# so it does with less than STATIC_HEADROOM under it: the room the
# performance issue (#16) asks to keep for what comes next. panic = "abort"
# (2026-12-03) left 812,424 bytes of room (bench/SIZE.md has every cut).
STATIC_BUDGET := 6291456
STATIC_HEADROOM := 524288
PREFIX ?= /usr
DESTDIR ?=

.PHONY: all build static test lint unit gen install deb rpm clean demo bench

all: build

build:
	$(CARGO) build --release

# A static-pie binary (glibc crt-static). Built with panic = "abort" (the
# release profile): on a panic the watchdog process thaws, not a Drop.
static:
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release --target $(TARGET)
	@file $(STATIC) | grep -q 'static-pie linked' || { echo "not static: $$(file $(STATIC))"; exit 1; }
	@size=$$(stat -c %s $(STATIC)); room=$$(( $(STATIC_BUDGET) - size )); \
	    echo "$(STATIC): $$size bytes stripped ($$(( size / 1024 )) KiB), $$room bytes ($$(( room / 1024 )) KiB) under the budget of $(STATIC_BUDGET)"; \
	    [ $$size -le $(STATIC_BUDGET) ] || { \
	        echo "$(STATIC) is over its budget of $(STATIC_BUDGET) bytes by $$(( -room )) (STATIC_BUDGET in the Makefile)"; exit 1; }; \
	    [ $$room -ge $(STATIC_HEADROOM) ] || { \
	        echo "$(STATIC) leaves $$room bytes under its budget, less than the $(STATIC_HEADROOM) bytes of headroom kept for what comes next (STATIC_HEADROOM in the Makefile; bench/SIZE.md)"; exit 1; }

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

# Man pages and bash/zsh/fish completions, generated from the clap
# definition that prints --help (packaging/gen), into target/gen.
GEN := target/gen

gen:
	rm -rf $(GEN)
	$(CARGO) run -q -p volsnap-gen -- $(GEN) >/dev/null
	gzip -9n $(GEN)/man/*.1

install: static gen
	install -D -m 0755 $(STATIC) $(DESTDIR)$(PREFIX)/bin/volsnap
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0644 $(GEN)/man/*.1.gz $(DESTDIR)$(PREFIX)/share/man/man1/
	install -D -m 0644 $(GEN)/completions/volsnap.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/volsnap
	install -D -m 0644 $(GEN)/completions/_volsnap $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_volsnap
	install -D -m 0644 $(GEN)/completions/volsnap.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/volsnap.fish
	install -d -m 0755 $(DESTDIR)$(PREFIX)/lib/volsnap/hooks
	for h in hooks/*; do [ -x "$$h" ] && install -m 0755 "$$h" $(DESTDIR)$(PREFIX)/lib/volsnap/hooks/; done; true
	install -D -m 0644 etc/volsnap.toml $(DESTDIR)/etc/volsnap/volsnap.toml.sample
	install -D -m 0644 packaging/systemd/volsnap.service $(DESTDIR)$(PREFIX)/lib/systemd/system/volsnap.service
	install -D -m 0644 packaging/systemd/volsnap.timer $(DESTDIR)$(PREFIX)/lib/systemd/system/volsnap.timer
	install -D -m 0644 packaging/systemd/volsnap-archive.service $(DESTDIR)$(PREFIX)/lib/systemd/system/volsnap-archive.service
	install -D -m 0755 etc/qemu-ga/fsfreeze-hook $(DESTDIR)$(PREFIX)/lib/volsnap/fsfreeze-hook
	install -D -m 0755 etc/qemu-ga/volsnap $(DESTDIR)$(PREFIX)/share/volsnap/qemu-ga/fsfreeze-hook.d-volsnap
	install -D -m 0644 etc/qemu-ga/qemu-guest-agent.service.d-volsnap.conf $(DESTDIR)$(PREFIX)/share/volsnap/qemu-ga/qemu-guest-agent.service.d-volsnap.conf
	install -D -m 0644 etc/cloud-init.yaml $(DESTDIR)$(PREFIX)/share/volsnap/cloud-init.yaml

# A Debian package, target/volsnap_<version>_amd64.deb, built with plain
# dpkg-deb from `make install`'s layout with PREFIX=/usr. Only the sample
# config is shipped (/etc/volsnap/volsnap.toml.sample, a conffile as policy
# wants every file in /etc): the real volsnap.toml is the admin's to write,
# usually with a secret in it, and volsnap refuses a secret-holding config
# that group or others can read; a packaged volsnap.toml would be a 0644 file
# that does not work until edited, and dpkg would prompt over it on upgrades.
# The timer is not enabled (packaging/deb/postinst).
DEB_VERSION = $(shell awk -F'"' '/^version *=/ { print $$2; exit }' Cargo.toml)
DEB_ROOT := target/deb/root
DEB := target/volsnap_$(DEB_VERSION)_amd64.deb

deb: static
	rm -rf target/deb
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(DEB_ROOT) PREFIX=/usr
	install -d -m 0755 $(DEB_ROOT)/usr/share/doc/volsnap
	echo "volsnap. License: Apache-2.0, see /usr/share/common-licenses/Apache-2.0." \
	    > $(DEB_ROOT)/usr/share/doc/volsnap/copyright
	chmod -R u+rwX,go+rX,go-w $(DEB_ROOT)
	install -d -m 0755 $(DEB_ROOT)/DEBIAN
	install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm $(DEB_ROOT)/DEBIAN/
	echo /etc/volsnap/volsnap.toml.sample > $(DEB_ROOT)/DEBIAN/conffiles
	cd $(DEB_ROOT) && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums
	{ echo "Package: volsnap"; \
	  echo "Version: $(DEB_VERSION)"; \
	  echo "Architecture: amd64"; \
	  echo "Maintainer: volsnap developers <volsnap@localhost>"; \
	  echo "Installed-Size: $$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1)"; \
	  echo "Section: admin"; \
	  echo "Priority: optional"; \
	  echo "Suggests: mariadb-client | default-mysql-client, mariadb-backup, postgresql-client, redis-tools, qemu-guest-agent"; \
	  desc=$$(awk -F'"' '/^description *=/ { print $$2; exit }' Cargo.toml); \
	  echo "Description: $${desc%%:*}"; \
	  echo "$$desc." | fold -s -w 72 | sed 's/ *$$//; s/^/ /'; \
	  echo " ."; \
	  echo " One static binary (no runtime dependencies), the datastore hooks in"; \
	  echo " /usr/lib/volsnap/hooks, systemd units (volsnap.timer and the WAL"; \
	  echo " archiver volsnap-archive.service are not enabled),"; \
	  echo " the qemu-guest-agent fsfreeze wiring and a cloud-config in"; \
	  echo " /usr/share/volsnap, man pages, bash/zsh/fish completions, and"; \
	  echo " /etc/volsnap/volsnap.toml.sample."; \
	} > $(DEB_ROOT)/DEBIAN/control
	dpkg-deb --root-owner-group --build $(DEB_ROOT) $(DEB)
	@echo "$(DEB)"

# An RPM, target/volsnap-<version>-1.x86_64.rpm, built with rpmbuild from
# `make install`'s layout with PREFIX=/usr (packaging/rpm/volsnap.spec).
RPM_TOP := target/rpm
RPM := target/volsnap-$(DEB_VERSION)-1.x86_64.rpm

rpm: static
	rm -rf $(RPM_TOP)
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(RPM_TOP)/root PREFIX=/usr
	rpmbuild -bb --quiet \
	    --define "_topdir $(CURDIR)/$(RPM_TOP)" \
	    --define "volsnap_version $(DEB_VERSION)" \
	    --define "volsnap_root $(CURDIR)/$(RPM_TOP)/root" \
	    packaging/rpm/volsnap.spec
	cp $(RPM_TOP)/RPMS/x86_64/volsnap-$(DEB_VERSION)-1.x86_64.rpm $(RPM)
	@echo "$(RPM)"

clean:
	$(CARGO) clean
