#!/bin/bash
# Install what the test cloud needs from Debian, on a fresh machine:
#   - tools the scripts and smoke test call (curl, losetup, fsfreeze, mkfs.ext4,
#     debugfs, mkfs.xfs, ss, findmnt, python3 venv support);
#   - memcached for Swift, as a binary extracted from its .deb into
#     tests/cloud/run/cache/memcached (`apt-get download` + `dpkg -x`), so no
#     system service is installed or started.
# Does nothing (and needs no network) when all of it is already there.
# apt-get update runs at most once, and only when something is missing.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

MEMCACHED_ROOT=$CACHE/memcached
MEMCACHED_BIN=$MEMCACHED_ROOT/usr/bin/memcached

# command -> Debian package
declare -A TOOLS=(
    [curl]=curl [losetup]=mount [findmnt]=mount [fsfreeze]=util-linux
    [mkfs.ext4]=e2fsprogs [debugfs]=e2fsprogs [e2fsck]=e2fsprogs
    [dumpe2fs]=e2fsprogs [mkfs.xfs]=xfsprogs [ss]=iproute2 [cmp]=diffutils
    [md5sum]=coreutils [setsid]=util-linux [dpkg-deb]=dpkg
)

updated=false
apt_update() {
    if ! $updated; then
        log "apt-get update"
        apt-get update -qq
        updated=true
    fi
}

apt_install() {
    apt_update
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
for tool in "${!TOOLS[@]}"; do
    command -v "$tool" >/dev/null || missing+=("${TOOLS[$tool]}")
done
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=(python3-venv)
fi
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt_install "${missing[@]}"
fi

if [[ ! -x $MEMCACHED_BIN ]]; then
    apt_update
    tmp=$(mktemp -d)
    chown _apt "$tmp" 2>/dev/null || true  # apt downloads as user _apt
    trap 'rm -rf "$tmp"' EXIT
    log "apt-get download memcached"
    (cd "$tmp" && apt-get download -qq memcached)
    rm -rf "$MEMCACHED_ROOT"
    mkdir -p "$MEMCACHED_ROOT"
    dpkg -x "$tmp"/memcached_*.deb "$MEMCACHED_ROOT"
fi
# The shared libraries memcached links against (libevent, libsasl2, ...).
if ldd "$MEMCACHED_BIN" | grep -q 'not found'; then
    apt_update
    mapfile -t libs < <(apt-cache depends memcached |
        sed -nE 's/^ *Depends: (lib[^ <>]*)$/\1/p')
    apt_install "${libs[@]}"
fi
"$MEMCACHED_BIN" -V >/dev/null
