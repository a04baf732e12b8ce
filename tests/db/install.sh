#!/bin/sh
# Install what the hook tests need: the real databases, their backup tools,
# qemu-ga, shellcheck and the filesystem/compression tools.
#
# Idempotent: packages already installed are not fetched again, and
# `apt-get update` runs at most once (only when something is missing).
# Nothing is started as a system service: when /usr/sbin/policy-rc.d is
# absent, a temporary one returning 101 ("action forbidden") is written for
# the duration of the install and removed afterwards.
set -eu

PACKAGES="mariadb-server mariadb-client mariadb-backup
postgresql postgresql-client
redis-server redis-tools
qemu-guest-agent shellcheck age zstd xfsprogs e2fsprogs util-linux procps
iproute2"

POLICY=/usr/sbin/policy-rc.d
POLICY_WRITTEN=

missing_packages() {
    for pkg in $PACKAGES; do
        status=$(dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null || true)
        case "$status" in
        *" installed") ;;
        *) printf '%s\n' "$pkg" ;;
        esac
    done
}

restore_policy() {
    if [ -n "$POLICY_WRITTEN" ]; then
        rm -f "$POLICY"
    fi
}

forbid_service_starts() {
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\n# written by volsnap tests/db/install.sh\nexit 101\n' >"$POLICY"
        chmod 0755 "$POLICY"
        POLICY_WRITTEN=1
    fi
}

main() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "install.sh: must run as root" >&2
        exit 1
    fi
    missing=$(missing_packages)
    if [ -z "$missing" ]; then
        echo "install.sh: all packages already installed" >&2
        return 0
    fi
    trap restore_policy EXIT
    trap 'exit 1' INT TERM HUP
    forbid_service_starts
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q
    before=$(mktemp)
    dpkg-query -W -f '${Package}\n' >"$before"
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    timeout 1200 apt-get install -y -q --no-install-recommends $missing
    # Nothing enabled at boot either (see the script).
    "$(dirname "$0")/../../scripts/no-enable-links.sh" "$before"
    rm -f "$before"
}

main "$@"
