#!/bin/sh
# Tests of hooks/redis against a real Redis started by tests/db/redis.sh.
set -eu
# shellcheck source=tests/hooks/lib.sh
. "$(dirname "$0")/lib.sh"

cleanup() {
    "$DB/redis.sh" stop "$WORK/db" >/dev/null 2>&1 || true
}

setup_work redis
"$DB/redis.sh" start "$WORK/db" >"$WORK/db.env"
# shellcheck source=/dev/null # written by redis.sh start
. "$WORK/db.env"

export VOLSNAP_DATASTORE=redis
export VOLSNAP_MOUNTS="$WORK/db"
export VOLSNAP_RUNTIME_DIR="$WORK/run"
export VOLSNAP_TIMEOUT=60
export VOLSNAP_REDIS_CLI_ARGS="-s $REDIS_SOCKET"
export VOLSNAP_REDIS_RDB_PATH="$REDIS_RDB_PATH"
export VOLSNAP_REDIS_STOP_CMD="'$DB/redis.sh' stop '$WORK/db'"
export VOLSNAP_REDIS_START_CMD="'$DB/redis.sh' start '$WORK/db' >/dev/null"

rcli() {
    timeout 30 redis-cli -s "$REDIS_SOCKET" "$@"
}

dump_has_key() {
    # The RDB stores short strings verbatim.
    grep -q "$1" "$REDIS_RDB_PATH"
}

save_time_fresh() {
    [ "$(out_value rdb_last_save)" -ge "$START" ]
}

hook redis nonsense
expect "an unknown action exits 2" rc_is 2
hook redis check
expect "check exits 0 against the running server" rc_is 0

rm -f "$REDIS_RDB_PATH"
START=$(date +%s)
rcli SET volsnap:key1 frozen-value >/dev/null
hook redis freeze
expect "freeze exits 0" rc_is 0
expect "freeze prints rdb_last_save" out_has '^rdb_last_save=[0-9][0-9]*$'
expect "rdb_last_save is from this freeze" save_time_fresh
expect "the dump file exists" [ -s "$REDIS_RDB_PATH" ]
expect "the dump holds the key written before freeze" dump_has_key frozen-value
rcli SET volsnap:key2 second-value >/dev/null
hook redis freeze
expect "a second freeze right after exits 0" rc_is 0
expect "... and its dump holds the newer key" dump_has_key second-value
hook redis thaw
expect "thaw exits 0" rc_is 0

say "backup | restore round trip"
rcli SET volsnap:a one >/dev/null
rcli SET volsnap:b two >/dev/null
delay=$(rcli CONFIG GET repl-diskless-sync-delay | sed -n 2p)
start=$(date +%s)
HOOK_RC=0
timeout 120 "$HOOKS/redis" backup >"$WORK/backup.rdb" 2>"$WORK/hook.err" || HOOK_RC=$?
elapsed=$(($(date +%s) - start))
: >"$WORK/hook.out"
expect "backup exits 0" rc_is 0
expect "backup is an RDB" [ "$(head -c 5 "$WORK/backup.rdb")" = REDIS ]
expect "backup did not wait out the diskless-sync delay (${elapsed}s)" [ "$elapsed" -lt 4 ]
expect "repl-diskless-sync-delay is back to $delay" [ "$(rcli CONFIG GET repl-diskless-sync-delay | sed -n 2p)" = "$delay" ]
expect "backup.meta records the version" grep -q '^datastore_version=[0-9]' "$VOLSNAP_RUNTIME_DIR/backup.meta"
rcli DEL volsnap:a >/dev/null
rcli SET volsnap:b changed >/dev/null
rcli SET volsnap:c three >/dev/null
HOOK_RC=0
timeout 300 "$HOOKS/redis" restore <"$WORK/backup.rdb" >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
expect "restore exits 0" rc_is 0
expect "restored: a = one" [ "$(rcli GET volsnap:a)" = one ]
expect "restored: b = two" [ "$(rcli GET volsnap:b)" = two ]
expect "restored: c absent" [ "$(rcli EXISTS volsnap:c)" = 0 ]
expect "the old RDB was removed" sh -c "! ls '$REDIS_RDB_PATH'.volsnap-* 2>/dev/null"

printf 'not an rdb' >"$WORK/junk"
HOOK_RC=0
timeout 60 "$HOOKS/redis" restore <"$WORK/junk" >"$WORK/hook.out" 2>"$WORK/hook.err" || HOOK_RC=$?
expect "restore of a non-RDB stream fails" rc_not 0
expect "... and the server still runs with its data" [ "$(rcli GET volsnap:b)" = two ]

"$DB/redis.sh" stop "$WORK/db" >/dev/null 2>&1
hook redis check
expect "check fails against a stopped server" rc_not 0
hook redis freeze
expect "freeze fails against a stopped server" rc_not 0

finish
