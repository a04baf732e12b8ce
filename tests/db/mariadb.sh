#!/bin/sh
# Start or stop a throw-away MariaDB server for the tests, run by hand as
# root (no systemd): `mariadb.sh start DIR` / `mariadb.sh stop DIR`.
#
# Layout under DIR (DIR may be the root of a mounted loop filesystem):
#   DIR/data/          the data directory (binary log on: data/binlog.*)
#   DIR/mysqld.sock    the socket; root connects over it (unix_socket auth)
#   DIR/mysqld.pid     the pid file
#   DIR/mysqld.log     the error log
#   DIR/client.cnf     a defaults file for clients, mariadb-backup and the hook
#   DIR/tmp/           the server's tmpdir
# Port: $MARIADB_PORT, or derived from DIR (23000-23999); bound to 127.0.0.1.
# $DB_DATA_DIR puts the data directory elsewhere (e.g. on a data volume while
# socket, pid file and log stay in DIR); give it to `stop` too.
# $MARIADB_LOG_BIN=off starts without the binary log (a copy of a data
# directory, started without its original's binlog).
# Prints the connection info as shell assignments on stdout, and writes them
# to $DB_ENV_FILE too when it is set.
set -eu
PROG=mariadb.sh
# shellcheck source=tests/db/lib.sh
. "$(dirname "$0")/lib.sh"

READY_SECONDS=${DB_READY_SECONDS:-60}
STOP_SECONDS=${DB_STOP_SECONDS:-30}

init_datadir() {
    [ -d "$DATA/mysql" ] && return 0
    log "initialising $DATA"
    mkdir -p "$DATA"
    timeout 120 mariadb-install-db --no-defaults --datadir="$DATA" --user=root \
        --auth-root-authentication-method=socket --skip-test-db --tmpdir="$TMP" \
        >"$DIR/install-db.log" 2>&1 || {
        cat "$DIR/install-db.log" >&2
        die "mariadb-install-db failed"
    }
}

write_client_cnf() {
    cat >"$DIR/client.cnf" <<CNF
[client]
user=root
socket=$SOCK
[mysqld]
datadir=$DATA
socket=$SOCK
CNF
    chmod 0600 "$DIR/client.cnf"
}

ping_server() {
    mariadb-admin --no-defaults --user=root --socket="$SOCK" --connect-timeout=2 ping >/dev/null 2>&1
}

start() {
    if pid_alive "$(cat "$PIDFILE" 2>/dev/null || true)"; then
        die "a server is already running on $DIR (pid $(cat "$PIDFILE"))"
    fi
    rm -f "$PIDFILE" "$SOCK"
    mkdir -p "$TMP"
    init_datadir
    write_client_cnf
    # Only this start's part of the error log counts when looking for an abort.
    log_from=1
    [ ! -f "$DIR/mysqld.log" ] || log_from=$(($(wc -c <"$DIR/mysqld.log") + 1))
    # Relative --log-bin: binlog.index then holds relative names, so a copy
    # of the data directory (snapshot, restore) starts with its own binlog.
    log_bin=--log-bin=binlog
    [ "${MARIADB_LOG_BIN:-on}" != off ] || log_bin=--skip-log-bin
    setsid -f mariadbd --no-defaults --user=root --datadir="$DATA" \
        --socket="$SOCK" --pid-file="$PIDFILE" --port="$PORT" \
        --bind-address=127.0.0.1 "$log_bin" --server-id=1 \
        --log-error="$DIR/mysqld.log" --innodb-buffer-pool-size=64M --tmpdir="$TMP" \
        </dev/null >/dev/null 2>&1
    n=$((READY_SECONDS * 10))
    until ping_server; do
        n=$((n - 1))
        if tail -c "+$log_from" "$DIR/mysqld.log" 2>/dev/null | grep -q '\[ERROR\] Aborting'; then
            tail -c "+$log_from" "$DIR/mysqld.log" | grep '\[ERROR\]' | tail -n 5 >&2
            die "server on $DIR aborted at start"
        fi
        if [ "$n" -le 0 ]; then
            tail -n 20 "$DIR/mysqld.log" >&2 || true
            die "server on $DIR not ready after ${READY_SECONDS}s"
        fi
        sleep 0.1
    done
    emit_env "${DB_ENV_FILE:-}" "MYSQL_DIR=$DIR" "MYSQL_SOCKET=$SOCK" \
        "MYSQL_PORT=$PORT" "MYSQL_DATADIR=$DATA" "MYSQL_PIDFILE=$PIDFILE" \
        "MYSQL_DEFAULTS_FILE=$DIR/client.cnf"
}

stop() {
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    if ! pid_alive "$pid"; then
        log "no server running on $DIR"
        return 0
    fi
    stop_pid "$pid" TERM "$STOP_SECONDS"
    rm -f "$PIDFILE"
}

[ $# -eq 2 ] || { echo "usage: $PROG start|stop DIR" >&2; exit 2; }
DIR=$(abs_dir "$2")
DATA=${DB_DATA_DIR:-$DIR/data}
DATA=${DATA%/}
SOCK=$DIR/mysqld.sock
PIDFILE=$DIR/mysqld.pid
# A private tmpdir: servers bootstrapping at the same time must not share
# (or clean up) each other's temporary tables in /tmp.
TMP=$DIR/tmp
PORT=${MARIADB_PORT:-$(derive_port 23000 "$DIR")}
case "$1" in
start) start ;;
stop) stop ;;
*) echo "usage: $PROG start|stop DIR" >&2; exit 2 ;;
esac
