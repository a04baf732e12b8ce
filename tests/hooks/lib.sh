# shellcheck shell=sh
# Shared by the hook tests (sourced). Counts results, prints
# "N passed, M failed" at the end, and cleans up through the caller's
# `cleanup` function on any exit.

ROOT=$(cd "$(dirname "$0")/../.." && pwd -P)
HOOKS=${VOLSNAP_HOOKS_DIR:-$ROOT/hooks}
# shellcheck disable=SC2034 # used by the tests that source this file
DB=$ROOT/tests/db
PASSED=0
FAILED=0
SKIPPED=0
MOUNTS_MADE=

say() { echo "# $*"; }

pass() {
    PASSED=$((PASSED + 1))
    echo "ok - $*"
}

fail() {
    FAILED=$((FAILED + 1))
    echo "not ok - $*"
    # Show what the last hook said, to make the failure readable.
    if [ -s "$WORK/hook.err" ]; then sed 's/^/#   stderr: /' "$WORK/hook.err"; fi
    if [ -s "$WORK/hook.out" ]; then sed 's/^/#   stdout: /' "$WORK/hook.out"; fi
}

skip() {
    SKIPPED=$((SKIPPED + 1))
    echo "ok - # SKIP $*"
}

# mount_loop DIR MB: mount a new ext4 filesystem of MB MiB (a loop device on
# a file in $WORK) on DIR; 1 if this machine cannot.
mount_loop() {
    img=$WORK/loop.$(echo "$1" | cksum | cut -d' ' -f1).img
    mkdir -p "$1"
    truncate -s "${2}M" "$img" && mkfs.ext4 -q -F "$img" >/dev/null 2>&1 &&
        timeout 30 mount -o loop "$img" "$1" 2>/dev/null || return 1
    MOUNTS_MADE="$1 $MOUNTS_MADE"
}

umount_loops() {
    for m in $MOUNTS_MADE; do
        timeout 30 umount "$m" 2>/dev/null || timeout 30 umount -l "$m" 2>/dev/null || true
    done
    MOUNTS_MADE=
}

# expect NAME CMD...: pass if CMD succeeds.
expect() {
    name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# expect_not NAME CMD...: pass if CMD fails.
expect_not() {
    name=$1
    shift
    if "$@"; then fail "$name"; else pass "$name"; fi
}

# hook NAME ACTION: run hooks/NAME ACTION bounded, stdout to $WORK/hook.out,
# stderr to $WORK/hook.err; sets HOOK_RC.
hook() {
    HOOK_RC=0
    timeout "${HOOK_TIMEOUT:-120}" "$HOOKS/$1" "$2" >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
    return 0
}

rc_is() { [ "$HOOK_RC" -eq "$1" ]; }
rc_not() { [ "$HOOK_RC" -ne "$1" ]; }
out_has() { grep -q -- "$1" "$WORK/hook.out"; }
err_has() { grep -q -- "$1" "$WORK/hook.err"; }

# out_value KEY: the value of KEY=... in the last hook's stdout.
out_value() { sed -n "s/^$1=//p" "$WORK/hook.out"; }

# eventually SECONDS CMD...: poll CMD every 0.2 s until it succeeds.
eventually() {
    n=$(($1 * 5))
    shift
    while [ "$n" -gt 0 ]; do
        "$@" && return 0
        sleep 0.2
        n=$((n - 1))
    done
    return 1
}

# setup_work PREFIX: a scratch directory that the postgres user can reach.
setup_work() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/volsnap-$1.XXXXXX")
    chmod 0755 "$WORK"
    trap 'cleanup; umount_loops; [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT
    trap 'exit 1' INT TERM HUP
}

finish() {
    if [ "$SKIPPED" -gt 0 ]; then
        echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
    else
        echo "$PASSED passed, $FAILED failed"
    fi
    [ "$FAILED" -eq 0 ]
}
