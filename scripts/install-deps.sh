#!/bin/bash
# Installs what volsnap's build and tests need on a fresh Debian machine.
# Idempotent: a second run only checks.
set -euo pipefail

# age, zstd, gzip and ssh-keygen: tests restore a backup by hand with the
# standard tools, as an operator would; systemd (systemd-analyze), cloud-init
# and shellcheck check the shipped units, cloud-config and scripts; time
# measures peak memory; make and file build the static binary and the Debian
# package (tests/deb.rs runs `make deb`; dpkg-deb comes with dpkg); rpm
# builds the RPM and installs it into a scratch root (tests/rpm.rs); groff
# and man render the generated man pages as a reader would.
packages=(make file e2fsprogs xfsprogs util-linux age zstd gzip openssh-client systemd cloud-init shellcheck time groff-base man-db rpm)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    apt-get update -qq
    before=$(mktemp)
    dpkg-query -W -f '${Package}\n' >"$before"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # cloud-init and anything else pulled in: nothing enabled at boot.
    "$(dirname "$0")/no-enable-links.sh" "$before"
    rm -f "$before"
fi

for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
