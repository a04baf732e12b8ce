#!/bin/sh
# Tests of hooks/postgresql against a real PostgreSQL started by
# tests/db/postgres.sh.
set -eu
# shellcheck source=tests/hooks/lib.sh
. "$(dirname "$0")/lib.sh"

cleanup() {
    "$DB/postgres.sh" stop "$WORK/db" >/dev/null 2>&1 || true
}

setup_work postgresql
"$DB/postgres.sh" start "$WORK/db" >"$WORK/db.env"
# shellcheck source=/dev/null # written by postgres.sh start
. "$WORK/db.env"

export VOLSNAP_DATASTORE=postgresql
export VOLSNAP_MOUNTS="$WORK/db"
export VOLSNAP_RUNTIME_DIR="$WORK/run"
export VOLSNAP_TIMEOUT=60
export VOLSNAP_PG_HOST="$PG_HOST"
export VOLSNAP_PG_PORT="$PG_PORT"
export VOLSNAP_PG_DATADIR="$PG_DATADIR"
export VOLSNAP_PG_BINDIR="$PG_BINDIR"
export VOLSNAP_PG_STOP_CMD="'$DB/postgres.sh' stop '$WORK/db'"
export VOLSNAP_PG_START_CMD="'$DB/postgres.sh' start '$WORK/db' >/dev/null"

sql() {
    timeout 60 runuser -u postgres -- "$PG_BINDIR/psql" -X -A -t -q -v ON_ERROR_STOP=1 \
        -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -c "$1"
}

server_up() {
    [ "$(sql 'SELECT 1' 2>/dev/null)" = 1 ]
}

lsn_format() {
    out_value wal_lsn | grep -Eq '^[0-9A-F]+/[0-9A-F]+$'
}

# lsn_not_after: the LSN freeze printed is not past the current one.
lsn_not_after() {
    [ "$(sql "SELECT pg_current_wal_lsn() >= '$(out_value wal_lsn)'::pg_lsn")" = t ]
}

checkpoint_recent() {
    # The last checkpoint's redo point is at most the printed LSN, and recent.
    [ "$(sql "SELECT checkpoint_time > now() - interval '30 seconds' FROM pg_control_checkpoint()")" = t ]
}

hook postgresql nonsense
expect "an unknown action exits 2" rc_is 2
hook postgresql check
expect "check exits 0 against the running server" rc_is 0

sql "CREATE TABLE r (k int PRIMARY KEY, v text); INSERT INTO r VALUES (1, 'one'), (2, 'two'), (3, 'three')"
hook postgresql freeze
expect "freeze exits 0" rc_is 0
expect "freeze prints wal_lsn" lsn_format
expect "wal_lsn is a real position (not past the current one)" lsn_not_after
expect "freeze ran a checkpoint just now" checkpoint_recent
expect "freeze prints datastore_version" out_has '^datastore_version=1[0-9]'
hook postgresql thaw
expect "thaw exits 0 and prints nothing" sh -c "[ $HOOK_RC -eq 0 ] && [ ! -s '$WORK/hook.out' ]"

say "backup | restore round trip"
before=$(sql "SELECT k, v FROM r ORDER BY k")
HOOK_RC=0
timeout 300 "$HOOKS/postgresql" backup >"$WORK/backup.tar" 2>"$WORK/hook.err" || HOOK_RC=$?
: >"$WORK/hook.out"
expect "backup exits 0" rc_is 0
expect "backup is a tar with backup_label" sh -c "tar -tf '$WORK/backup.tar' | grep -qx backup_label"
expect "backup.meta records the version" grep -q '^datastore_version=1[0-9]' "$VOLSNAP_RUNTIME_DIR/backup.meta"
expect "backup.meta records where the base's WAL starts" \
    grep -Eq '^wal_start_segment=[0-9A-F]{24}$' "$VOLSNAP_RUNTIME_DIR/backup.meta"
hook postgresql archive-settings
expect "archive-settings exits 0" rc_is 0
expect "archive-settings prints archive_mode" out_has '^archive_mode=off$'
expect "archive-settings prints archive_timeout with its unit" out_has '^archive_timeout=0s$'
expect "archive-settings prints archive_command and wal_level" \
    sh -c "grep -q '^archive_command=' '$WORK/hook.out' && grep -q '^wal_level=replica$' '$WORK/hook.out'"
sql "DELETE FROM r WHERE k = 2; UPDATE r SET v = 'changed' WHERE k = 1; INSERT INTO r VALUES (4, 'four')"
HOOK_RC=0
timeout 300 "$HOOKS/postgresql" restore <"$WORK/backup.tar" >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
expect "restore exits 0" rc_is 0
after=$(sql "SELECT k, v FROM r ORDER BY k" || true)
expect "the data is as backed up" [ "$after" = "$before" ]
expect "the data directory is owned by postgres" [ "$(stat -c %U "$PG_DATADIR")" = postgres ]
expect "the data directory has mode 0700" [ "$(stat -c %a "$PG_DATADIR")" = 700 ]
expect "the old data directory was removed" sh -c "! ls -d '$PG_DATADIR'.volsnap-old.* 2>/dev/null"

say "restore into a data directory that is a mountpoint"
"$DB/postgres.sh" stop "$WORK/db" >/dev/null
mv "$PG_DATADIR" "$WORK/db/data.orig"
if mount_loop "$PG_DATADIR" 200; then
    cp -a "$WORK/db/data.orig/." "$PG_DATADIR/"
    rm -rf "$WORK/db/data.orig"
    # pg_basebackup reads every entry of the data directory.
    chown postgres: "$PG_DATADIR" "$PG_DATADIR/lost+found"
    chmod 0700 "$PG_DATADIR"
    "$DB/postgres.sh" start "$WORK/db" >/dev/null
    sql "INSERT INTO r VALUES (10, 'ten')"
    before=$(sql "SELECT k, v FROM r ORDER BY k")
    HOOK_RC=0
    timeout 300 "$HOOKS/postgresql" backup >"$WORK/backup.tar" 2>"$WORK/hook.err" || HOOK_RC=$?
    expect "mountpoint: backup exits 0" rc_is 0
    sql "DELETE FROM r; INSERT INTO r VALUES (11, 'eleven')"
    HOOK_RC=0
    timeout 300 "$HOOKS/postgresql" restore <"$WORK/backup.tar" >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
    expect "mountpoint: restore exits 0" rc_is 0
    after=$(sql "SELECT k, v FROM r ORDER BY k" || true)
    expect "mountpoint: the data is as backed up" [ "$after" = "$before" ]
    expect "mountpoint: still a mountpoint" mountpoint -q "$PG_DATADIR"
    expect "mountpoint: lost+found kept in place" [ -d "$PG_DATADIR/lost+found" ]
    expect "mountpoint: mode 0700, owner postgres" [ "$(stat -c '%a %U' "$PG_DATADIR")" = "700 postgres" ]
    expect "mountpoint: no old or staging directory left" \
        sh -c "! ls -d '$PG_DATADIR'/.volsnap-* 2>/dev/null"
else
    rmdir "$PG_DATADIR" 2>/dev/null || true
    mv "$WORK/db/data.orig" "$PG_DATADIR"
    "$DB/postgres.sh" start "$WORK/db" >/dev/null
    skip "no loop mounts on this machine"
fi

hook postgresql restore </dev/null
expect "restore of an empty stream fails" rc_not 0
expect "... and the server still runs" server_up

"$DB/postgres.sh" stop "$WORK/db" >/dev/null 2>&1
hook postgresql check
expect "check fails against a stopped server" rc_not 0
hook postgresql freeze
expect "freeze fails against a stopped server" rc_not 0

finish
