#!/bin/sh
# Tests of hooks/none: no-op quiesce, tar backup/restore of the mounts.
set -eu
# shellcheck source=tests/hooks/lib.sh
. "$(dirname "$0")/lib.sh"

cleanup() { :; }

setup_work none
export VOLSNAP_DATASTORE=none
export VOLSNAP_RUNTIME_DIR="$WORK/run"
export VOLSNAP_TIMEOUT=60

make_tree() {
    mkdir -p "$1/sub/deeper" "$1/empty"
    printf 'hello\n' >"$1/a.txt"
    head -c 100000 /dev/urandom >"$1/sub/blob.bin"
    printf 'x' >"$1/sub/deeper/odd name with spaces"
    ln -s ../a.txt "$1/sub/link"
    chmod 0640 "$1/a.txt"
    chown 1234:4321 "$1/sub/blob.bin"
}

# same_tree A B: same content, modes, owners and symlinks.
same_tree() {
    diff -r --no-dereference "$1" "$2" >&2 || return 1
    [ "$(cd "$1" && find . -printf '%p %m %u:%g %l\n' | sort)" = \
        "$(cd "$2" && find . -printf '%p %m %u:%g %l\n' | sort)" ]
}

for action in freeze thaw check; do
    hook none "$action"
    expect "$action exits 0" rc_is 0
    expect "$action prints nothing" [ ! -s "$WORK/hook.out" ]
done
hook none nonsense
expect "an unknown action exits 2" rc_is 2

make_tree "$WORK/src/one"
make_tree "$WORK/src/two"
export VOLSNAP_MOUNTS="$WORK/src/one $WORK/src/two"
HOOK_RC=0
timeout 60 "$HOOKS/none" backup >"$WORK/backup.tar" 2>"$WORK/hook.err" || HOOK_RC=$?
expect "backup exits 0" rc_is 0
expect "backup holds relative paths" sh -c "tar -tf '$WORK/backup.tar' | grep -q '^${WORK#/}/src/one/a.txt\$'"
expect "backup.meta written" grep -q '^datastore=none$' "$VOLSNAP_RUNTIME_DIR/backup.meta"

HOOK_RC=0
env -u VOLSNAP_RESTORE_DIR "$HOOKS/none" restore <"$WORK/backup.tar" >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
expect "restore without VOLSNAP_RESTORE_DIR is refused" rc_not 0

HOOK_RC=0
VOLSNAP_RESTORE_DIR="$WORK/restored" timeout 60 "$HOOKS/none" restore \
    <"$WORK/backup.tar" >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
expect "restore exits 0" rc_is 0
expect "first tree restored identically" same_tree "$WORK/src/one" "$WORK/restored$WORK/src/one"
expect "second tree restored identically" same_tree "$WORK/src/two" "$WORK/restored$WORK/src/two"

finish
