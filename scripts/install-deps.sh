#!/bin/bash
# Installs what volsnap's build and tests need on a fresh Debian machine.
# Idempotent: a second run only checks.
set -euo pipefail

# age, zstd, gzip and ssh-keygen: tests/stream.rs restores a backup by hand
# with the standard tools, as an operator would. GNU time: the peak RSS of
# volsnap in tests/swift_backup.rs and bench/swift-throughput.
packages=(file e2fsprogs xfsprogs util-linux age zstd gzip openssh-client time)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
