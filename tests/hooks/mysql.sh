#!/bin/sh
# Tests of hooks/mysql against a real MariaDB started by tests/db/mariadb.sh.
set -eu
# shellcheck source=tests/hooks/lib.sh
. "$(dirname "$0")/lib.sh"

cleanup() {
    # Release whatever a failed test may have left, then stop the server
    # (before the loop mounts under it go).
    timeout 30 "$HOOKS/mysql" thaw >/dev/null 2>&1 || true
    [ -z "${BLOCKER_PID:-}" ] || kill "$BLOCKER_PID" 2>/dev/null || true
    "$DB/mariadb.sh" stop "$WORK/db" >/dev/null 2>&1 || true
}

setup_work mysql
"$DB/mariadb.sh" start "$WORK/db" >"$WORK/db.env"
# shellcheck source=/dev/null # written by mariadb.sh start
. "$WORK/db.env"

export VOLSNAP_DATASTORE=mysql
export VOLSNAP_MOUNTS="$WORK/db"
export VOLSNAP_RUNTIME_DIR="$WORK/run"
export VOLSNAP_TIMEOUT=60
export VOLSNAP_MYSQL_DEFAULTS_FILE="$MYSQL_DEFAULTS_FILE"
export VOLSNAP_MYSQL_DATADIR="$MYSQL_DATADIR"
export VOLSNAP_MYSQL_STOP_CMD="'$DB/mariadb.sh' stop '$WORK/db'"
export VOLSNAP_MYSQL_START_CMD="'$DB/mariadb.sh' start '$WORK/db' >/dev/null"

sql() {
    timeout 60 mariadb --defaults-file="$MYSQL_DEFAULTS_FILE" --batch --skip-column-names -e "$1"
}

# insert_blocked: another session's INSERT fails with 1205 within 1 s.
insert_blocked() {
    out=$(sql "SET SESSION lock_wait_timeout = 1; INSERT INTO d.t (v) VALUES ('during')" 2>&1) && return 1
    case "$out" in *1205*) return 0 ;; *) echo "# unexpected: $out" && return 1 ;; esac
}

insert_ok() {
    sql "SET SESSION lock_wait_timeout = 1; INSERT INTO d.t (v) VALUES ('after')" >/dev/null 2>&1
}

binlog_matches() {
    status=$(sql 'SHOW MASTER STATUS')
    file=$(printf '%s\n' "$status" | cut -f1)
    pos=$(printf '%s\n' "$status" | cut -f2)
    [ -n "$file" ] && [ "$(out_value binlog_file)" = "$file" ] && [ "$(out_value binlog_pos)" = "$pos" ]
}

no_holder_left() {
    [ ! -e "$VOLSNAP_RUNTIME_DIR/mysql.client.pid" ] && [ ! -e "$VOLSNAP_RUNTIME_DIR/mysql.fifo" ]
}

# freeze_thaw_cycle LOCK: the lock blocks writes, the metadata is right,
# thaw releases, a second thaw is harmless.
freeze_thaw_cycle() {
    say "freeze/thaw with VOLSNAP_MYSQL_LOCK=$1"
    VOLSNAP_MYSQL_LOCK=$1 hook mysql freeze
    expect "$1: freeze exits 0" rc_is 0
    expect "$1: freeze reports the lock kind" out_has "^lock=$1\$"
    expect "$1: binlog_file/binlog_pos match SHOW MASTER STATUS under the lock" binlog_matches
    expect "$1: freeze prints gtid" out_has '^gtid=0-1-'
    expect "$1: another session's INSERT fails with 1205 while frozen" insert_blocked
    hook mysql thaw
    expect "$1: thaw exits 0" rc_is 0
    expect "$1: INSERT succeeds after thaw" insert_ok
    expect "$1: nothing left in the runtime dir" no_holder_left
    hook mysql thaw
    expect "$1: a second thaw exits 0" rc_is 0
}

# The hook must not hold volsnap's stdout open after it exits, and its lock
# must survive the kill of the hook's process group (as volsnap does on
# timeout). `cat` only sees EOF once every writer of the pipe is gone.
detach_test() {
    say "the holder is detached from the hook's stdout and process group"
    start=$(date +%s)
    rc=0
    timeout 15 setsid sh -c "'$HOOKS/mysql' freeze 2>'$WORK/hook.err' | cat >'$WORK/hook.out'; kill -KILL 0" 2>/dev/null || rc=$?
    elapsed=$(($(date +%s) - start))
    # setsid's child kills its own group at the end: rc 137 from timeout's
    # view is that kill, not the timeout (124).
    quick=no
    if [ "$elapsed" -lt 10 ] && [ "$rc" -ne 124 ]; then quick=yes; fi
    expect "freeze through a pipe returns at once (${elapsed}s, rc $rc)" [ "$quick" = yes ]
    expect "the lock survives the kill of the hook's process group" insert_blocked
    hook mysql thaw
    expect "thaw after the group kill exits 0" rc_is 0
    expect "INSERT succeeds after that thaw" insert_ok
}

self_release_test() {
    say "a freeze with no thaw releases by itself after VOLSNAP_TIMEOUT"
    VOLSNAP_TIMEOUT=3 hook mysql freeze
    expect "freeze (VOLSNAP_TIMEOUT=3) exits 0" rc_is 0
    expect "writes are blocked right after freeze" insert_blocked
    sleep 3
    expect "INSERT succeeds within a few seconds of the timeout" eventually 10 insert_ok
    hook mysql thaw
    expect "thaw after the self-release exits 0" rc_is 0
    expect "nothing left after the self-release" no_holder_left
}

# blocked_freeze_test LOCK BLOCKER_SQL: a session holding a conflicting lock
# makes freeze give up (bounded) and leave nothing behind.
blocked_freeze_test() {
    say "freeze ($1) against a blocking session: $2"
    timeout 60 mariadb --defaults-file="$MYSQL_DEFAULTS_FILE" -e "$2" >/dev/null 2>&1 &
    BLOCKER_PID=$!
    eventually 10 sh -c "[ -n \"\$(timeout 10 mariadb --defaults-file='$MYSQL_DEFAULTS_FILE' -N -B -e \"SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(30)%' AND INFO NOT LIKE '%PROCESSLIST%'\")\" ]" ||
        say "blocker did not show up"
    start=$(date +%s)
    VOLSNAP_MYSQL_LOCK=$1 VOLSNAP_MYSQL_LOCK_WAIT_TIMEOUT=1 VOLSNAP_MYSQL_LOCK_RETRIES=2 hook mysql freeze
    elapsed=$(($(date +%s) - start))
    expect "$1: freeze fails when blocked" rc_not 0
    expect "$1: ... within its bounded retries (${elapsed}s)" [ "$elapsed" -lt 15 ]
    expect "$1: ... with a clear message" err_has 'could not take the lock in 2 attempts'
    expect "$1: ... and leaves no holder behind" no_holder_left
    expect "$1: ... and no lock: writes to another table succeed" \
        sql "SET SESSION lock_wait_timeout = 1; INSERT INTO d.u VALUES (1)"
    ids=$(sql "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(30)%' AND INFO NOT LIKE '%PROCESSLIST%'")
    for id in $ids; do sql "KILL CONNECTION $id" || true; done
    wait "$BLOCKER_PID" 2>/dev/null || true
    BLOCKER_PID=
    expect "$1: freeze succeeds once the blocker is gone" sh -c "VOLSNAP_MYSQL_LOCK=$1 '$HOOKS/mysql' freeze >/dev/null 2>&1"
    hook mysql thaw
}

# A user with only some privileges: check names what is missing, and the
# privileges it asks for are enough for freeze and backup.
privileges_test() {
    say "check against a user with too few privileges"
    sql "CREATE USER vs@localhost IDENTIFIED BY 'vs-secret'; GRANT RELOAD ON *.* TO vs@localhost"
    printf '[client]\nuser=vs\npassword=vs-secret\nsocket=%s\n' "$MYSQL_SOCKET" >"$WORK/vs.cnf"
    VOLSNAP_MYSQL_DEFAULTS_FILE="$WORK/vs.cnf" hook mysql check
    expect "check fails for a user with only RELOAD" rc_is 1
    expect "... and names the missing privileges" err_has 'missing privileges: BINLOG MONITOR,PROCESS,LOCK TABLES'
    sql "GRANT BINLOG MONITOR, PROCESS, LOCK TABLES ON *.* TO vs@localhost"
    VOLSNAP_MYSQL_DEFAULTS_FILE="$WORK/vs.cnf" hook mysql check
    expect "check passes once they are granted" rc_is 0
    VOLSNAP_MYSQL_DEFAULTS_FILE="$WORK/vs.cnf" hook mysql freeze
    expect "freeze works with exactly those privileges" rc_is 0
    expect "... and blocks writes" insert_blocked
    VOLSNAP_MYSQL_DEFAULTS_FILE="$WORK/vs.cnf" hook mysql thaw
    expect "... and thaw releases" insert_ok
    HOOK_RC=0
    VOLSNAP_MYSQL_DEFAULTS_FILE="$WORK/vs.cnf" timeout 300 "$HOOKS/mysql" backup \
        >"$WORK/vs-backup.xb" 2>"$WORK/hook.err" || HOOK_RC=$?
    expect "backup works with exactly those privileges" rc_is 0
    rm -f "$WORK/vs-backup.xb"
}

backup_restore_test() {
    say "backup | restore round trip"
    sql "CREATE TABLE d.r (k INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB;
         INSERT INTO d.r VALUES (1, 'one'), (2, 'two'), (3, 'three')"
    before=$(sql 'SELECT k, v FROM d.r ORDER BY k')
    HOOK_RC=0
    timeout 300 "$HOOKS/mysql" backup >"$WORK/backup.xb" 2>"$WORK/hook.err" || HOOK_RC=$?
    : >"$WORK/hook.out"
    expect "backup exits 0" rc_is 0
    expect "backup wrote a stream" [ -s "$WORK/backup.xb" ]
    expect "backup.meta records the version" grep -q '^datastore_version=10\.' "$VOLSNAP_RUNTIME_DIR/backup.meta"
    sql "DELETE FROM d.r WHERE k = 2; UPDATE d.r SET v = 'changed' WHERE k = 1; INSERT INTO d.r VALUES (4, 'four')"
    HOOK_RC=0
    timeout 300 "$HOOKS/mysql" restore <"$WORK/backup.xb" >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
    expect "restore exits 0" rc_is 0
    after=$(sql 'SELECT k, v FROM d.r ORDER BY k' || true)
    expect "the data is as backed up" [ "$after" = "$before" ]
    expect "the old data directory was removed" sh -c "! ls -d '$MYSQL_DATADIR'.volsnap-old.* 2>/dev/null"
    expect "no staging directory left" sh -c "! ls -d '$WORK/db'/.volsnap-restore.* 2>/dev/null"
}

# The usual Cinder layout: the data directory is the volume's mountpoint,
# which restore cannot rename; it swaps the content instead.
mountpoint_restore_test() {
    say "restore into a data directory that is a mountpoint"
    "$DB/mariadb.sh" stop "$WORK/db" >/dev/null
    mv "$MYSQL_DATADIR" "$WORK/db/data.orig"
    if ! mount_loop "$MYSQL_DATADIR" 300; then
        rmdir "$MYSQL_DATADIR" 2>/dev/null || true
        mv "$WORK/db/data.orig" "$MYSQL_DATADIR"
        "$DB/mariadb.sh" start "$WORK/db" >/dev/null
        skip "no loop mounts on this machine"
        return 0
    fi
    cp -a "$WORK/db/data.orig/." "$MYSQL_DATADIR/"
    rm -rf "$WORK/db/data.orig"
    "$DB/mariadb.sh" start "$WORK/db" >/dev/null
    sql "INSERT INTO d.r VALUES (10, 'ten')"
    before=$(sql 'SELECT k, v FROM d.r ORDER BY k')
    HOOK_RC=0
    timeout 300 "$HOOKS/mysql" backup >"$WORK/backup.xb" 2>"$WORK/hook.err" || HOOK_RC=$?
    expect "mountpoint: backup exits 0" rc_is 0
    sql "DELETE FROM d.r; INSERT INTO d.r VALUES (11, 'eleven')"
    HOOK_RC=0
    timeout 300 "$HOOKS/mysql" restore <"$WORK/backup.xb" >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
    expect "mountpoint: restore exits 0" rc_is 0
    after=$(sql 'SELECT k, v FROM d.r ORDER BY k' || true)
    expect "mountpoint: the data is as backed up" [ "$after" = "$before" ]
    expect "mountpoint: still a mountpoint" mountpoint -q "$MYSQL_DATADIR"
    expect "mountpoint: lost+found kept in place" [ -d "$MYSQL_DATADIR/lost+found" ]
    expect "mountpoint: no old or staging directory left" \
        sh -c "! ls -d '$MYSQL_DATADIR'/.volsnap-* 2>/dev/null"
    "$DB/mariadb.sh" stop "$WORK/db" >/dev/null
    umount_loops
    "$DB/mariadb.sh" start "$WORK/db" >/dev/null 2>&1 || true
}

# check_with VAR=VALUE...: `hook mysql check` with these settings only.
check_with() {
    HOOK_RC=0
    timeout 60 env "$@" "$HOOKS/mysql" check >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
}

socket_and_user_test() {
    say "VOLSNAP_MYSQL_SOCKET and VOLSNAP_MYSQL_USER"
    sock=$(sed -n 's/^socket=//p' "$MYSQL_DEFAULTS_FILE" | head -n 1)
    check_with VOLSNAP_MYSQL_DEFAULTS_FILE=/nonexistent VOLSNAP_MYSQL_SOCKET="$sock" VOLSNAP_MYSQL_USER=root
    expect "socket and user reach the server without a defaults file" rc_is 0
    check_with VOLSNAP_MYSQL_DEFAULTS_FILE=/nonexistent VOLSNAP_MYSQL_SOCKET="$WORK/none.sock" VOLSNAP_MYSQL_USER=root
    expect "... a wrong socket is used (and fails)" rc_not 0
    check_with VOLSNAP_MYSQL_SOCKET="$WORK/none.sock"
    expect "... and wins over the defaults file's" rc_not 0
    expect "... which stays private" sh -c "[ \"\$(stat -c %a '$VOLSNAP_RUNTIME_DIR/mysql-client.cnf')\" = 600 ]"
}

sql "CREATE DATABASE d; CREATE TABLE d.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB;
     CREATE TABLE d.u (i INT) ENGINE=InnoDB; INSERT INTO d.t (v) VALUES ('first')"

hook mysql nonsense
expect "an unknown action exits 2" rc_is 2
expect "... with the usage on stderr" err_has usage
hook mysql thaw
expect "thaw without freeze exits 0" rc_is 0
hook mysql check
expect "check exits 0 against the running server" rc_is 0
socket_and_user_test

freeze_thaw_cycle backup_stage
freeze_thaw_cycle ftwrl
detach_test
self_release_test
# LOCK TABLES ... WRITE conflicts with both locks. A long-running InnoDB write
# blocks FTWRL but not BACKUP STAGE (which only holds commits back).
blocked_freeze_test backup_stage "LOCK TABLES d.t WRITE; SELECT SLEEP(30)"
blocked_freeze_test ftwrl "INSERT INTO d.t (v) SELECT SLEEP(30)"
privileges_test
backup_restore_test
mountpoint_restore_test
# Last while the server runs: after FLUSH BINARY LOGS the server appends a
# Binlog_checkpoint event to the new file a moment later, which would move
# SHOW MASTER STATUS past what a freeze right after it had printed.
hook mysql archive-settings
expect "archive-settings exits 0" rc_is 0
expect "... prints log_bin, binlog_format and server_id" \
    sh -c "grep -qx 'log_bin=ON' '$WORK/hook.out' && grep -q '^binlog_format=' '$WORK/hook.out' && grep -qx 'server_id=1' '$WORK/hook.out'"
before=$(sed -n 's/^binlog_file=//p' "$WORK/hook.out")
expect "... the binary log being written, last of binlog_files" \
    sh -c "[ -n '$before' ] && grep -q '^binlog_files=.*$before\$' '$WORK/hook.out'"
hook mysql binlog-flush
expect "binlog-flush exits 0" rc_is 0
hook mysql archive-settings
expect "... and closes it: the server writes the next file" \
    sh -c "! grep -qx 'binlog_file=$before' '$WORK/hook.out' && grep -q '^binlog_files=.*$before ' '$WORK/hook.out'"

"$DB/mariadb.sh" stop "$WORK/db" >/dev/null 2>&1
hook mysql check
expect "check fails against a stopped server" rc_not 0
hook mysql freeze
expect "freeze fails against a stopped server" rc_not 0
expect "... and leaves no holder behind" no_holder_left

finish
