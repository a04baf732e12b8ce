#!/bin/sh
# hooks/mysql as qemu-ga's fsfreeze hook (the way Nova's quiesced snapshots
# call it): a real qemu-ga on a unix socket, MariaDB on a loop-mounted ext4.
# qemu-ga waits for the hook and must not hang on the detached lock holder;
# the lock must be held while the filesystem is frozen and gone after thaw.
set -eu
# shellcheck source=tests/hooks/lib.sh
. "$(dirname "$0")/lib.sh"

QGA_PID=
cleanup() {
    # qemu-ga ignores SIGTERM while frozen: thaw first.
    if [ -n "${MNT:-}" ] && mountpoint -q "$MNT"; then
        timeout 10 fsfreeze -u "$MNT" 2>/dev/null || true
    fi
    [ -z "$QGA_PID" ] || { kill -KILL "$QGA_PID" 2>/dev/null || true; }
    timeout 30 "$HOOKS/mysql" thaw >/dev/null 2>&1 || true
    [ -z "${MNT:-}" ] || "$DB/mariadb.sh" stop "$MNT" >/dev/null 2>&1 || true
}

setup_work qemu-ga
if ! command -v qemu-ga >/dev/null || ! command -v python3 >/dev/null; then
    skip "qemu-ga or python3 missing"
    finish
    exit 0
fi
MNT=$WORK/mnt
if ! mount_loop "$MNT" 300; then
    skip "no loop mounts on this machine"
    finish
    exit 0
fi
"$DB/mariadb.sh" start "$MNT" >"$WORK/db.env"
# shellcheck source=/dev/null # written by mariadb.sh start
. "$WORK/db.env"

export VOLSNAP_RUNTIME_DIR="$WORK/run"
export VOLSNAP_TIMEOUT=60
export VOLSNAP_MYSQL_DEFAULTS_FILE="$MYSQL_DEFAULTS_FILE"

sql() {
    timeout 60 mariadb --defaults-file="$MYSQL_DEFAULTS_FILE" --batch --skip-column-names -e "$1"
}

# While the filesystem is frozen, a write can block on I/O before it reaches
# the lock (a page being written out, the binlog of a MEMORY table), so the
# probe is a second BACKUP STAGE START: it conflicts with the hook's lock
# (1205 after lock_wait_timeout) before it does any I/O.
lock_held() {
    out=$(timeout 15 mariadb --defaults-file="$MYSQL_DEFAULTS_FILE" \
        -e "SET SESSION lock_wait_timeout = 1; BACKUP STAGE START" 2>&1) && return 1
    case "$out" in *1205*) return 0 ;; *) echo "# unexpected: $out" && return 1 ;; esac
}

insert_ok() {
    sql "SET SESSION lock_wait_timeout = 1; INSERT INTO d.t VALUES (3)" >/dev/null 2>&1
}

# qga JSON: send one command to qemu-ga, print its reply line.
qga() {
    timeout 60 python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
f = s.makefile()
print(f.readline().strip())
' "$WORK/qga.sock" "$1"
}

sql "CREATE DATABASE d; CREATE TABLE d.t (i INT) ENGINE=InnoDB; INSERT INTO d.t VALUES (1)"
mkdir -p "$WORK/qga-state"
# shellcheck disable=SC2016 # expanded by the inner shell
setsid -f sh -c 'echo $$ >"$1"; shift; exec "$@"' qga "$WORK/qga.pid" \
    qemu-ga -m unix-listen -p "$WORK/qga.sock" -F"$HOOKS/mysql" \
    -t "$WORK/qga-state" -l "$WORK/qga.log" -v </dev/null >/dev/null 2>&1
eventually 10 test -S "$WORK/qga.sock" || say "qemu-ga socket did not appear"
QGA_PID=$(cat "$WORK/qga.pid")

start=$(date +%s)
reply=$(qga "{\"execute\": \"guest-fsfreeze-freeze-list\", \"arguments\": {\"mountpoints\": [\"$MNT\"]}}" || true)
elapsed=$(($(date +%s) - start))
expect "qemu-ga froze the one filesystem (reply: $reply)" [ "$reply" = '{"return": 1}' ]
expect "freeze-list returned promptly (${elapsed}s): qemu-ga did not wait on the holder" [ "$elapsed" -lt 15 ]
expect "the hook's lock is held while frozen" lock_held
reply=$(qga '{"execute": "guest-fsfreeze-status"}' || true)
expect "qemu-ga reports frozen" [ "$reply" = '{"return": "frozen"}' ]
reply=$(qga '{"execute": "guest-fsfreeze-thaw"}' || true)
expect "qemu-ga thawed the filesystem (reply: $reply)" [ "$reply" = '{"return": 1}' ]
expect "the lock is released after thaw" eventually 10 insert_ok
expect "no holder left" [ ! -e "$VOLSNAP_RUNTIME_DIR/mysql.client.pid" ]

# A hook that fails on freeze: qemu-ga freezes nothing.
"$DB/mariadb.sh" stop "$MNT" >/dev/null
reply=$(qga "{\"execute\": \"guest-fsfreeze-freeze-list\", \"arguments\": {\"mountpoints\": [\"$MNT\"]}}" || true)
expect "a failing freeze hook makes qemu-ga refuse to freeze" sh -c "echo '$reply' | grep -q 'fsfreeze hook has failed'"
reply=$(qga '{"execute": "guest-fsfreeze-status"}' || true)
expect "... and nothing is frozen" [ "$reply" = '{"return": "thawed"}' ]

finish
