#!/bin/sh
# Start or stop a throw-away PostgreSQL server for the tests, run by hand as
# root (no systemd): `postgres.sh start DIR` / `postgres.sh stop DIR`.
# PostgreSQL refuses to run as root, so the server runs as the `postgres`
# OS user (override: $PG_OS_USER); DIR must be reachable by that user.
#
# Layout under DIR (DIR may be the root of a mounted loop filesystem):
#   DIR/data/            the data directory (postmaster.pid is the pid file)
#   DIR/run/             the socket directory (.s.PGSQL.PORT)
#   DIR/postgres.log     the server log
# Port: $PG_PORT, or derived from DIR (25000-25999); bound to 127.0.0.1.
# $DB_DATA_DIR puts the data directory elsewhere (e.g. on a data volume while
# the socket directory and the log stay in DIR); give it to `stop` too. Its
# parent must be reachable by the server's user. A copy of a live data
# directory carries the original's postmaster.pid: remove it first.
# Binaries: $PG_BINDIR, or the newest /usr/lib/postgresql/*/bin.
# Prints the connection info as shell assignments on stdout, and writes them
# to $DB_ENV_FILE too when it is set.
set -eu
PROG=postgres.sh
# shellcheck source=tests/db/lib.sh
. "$(dirname "$0")/lib.sh"

READY_SECONDS=${DB_READY_SECONDS:-60}
STOP_SECONDS=${DB_STOP_SECONDS:-30}
OS_USER=${PG_OS_USER:-postgres}

find_bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then
        echo "$PG_BINDIR"
        return 0
    fi
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/pg_ctl" ] && echo "$d"
    done | sort -V | tail -n 1
}

# as_pg SECONDS CMD...: run CMD as the server's OS user, bounded.
as_pg() {
    secs=$1
    shift
    if [ "$(id -u)" -eq 0 ]; then
        timeout "$secs" runuser -u "$OS_USER" -- "$@"
    else
        timeout "$secs" "$@"
    fi
}

prepare_dirs() {
    # The server user must be able to reach DIR (mktemp -d makes 0700 dirs).
    chmod o+x "$DIR"
    as_pg 10 test -x "$DIR" || die "user $OS_USER cannot reach $DIR (check the modes of its parents)"
    as_pg 10 test -x "$(dirname "$DATA")" || die "user $OS_USER cannot reach $(dirname "$DATA") (check the modes of its parents)"
    mkdir -p "$DATA" "$DIR/run"
    touch "$LOGFILE"
    chown "$OS_USER:" "$DATA" "$DIR/run" "$LOGFILE"
    chmod 0700 "$DATA"
}

init_datadir() {
    [ -f "$DATA/PG_VERSION" ] && return 0
    log "initialising $DATA"
    as_pg 120 "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust \
        >"$DIR/initdb.log" 2>&1 || {
        cat "$DIR/initdb.log" >&2
        die "initdb failed"
    }
}

start() {
    if pid_alive "$(head -n 1 "$PIDFILE" 2>/dev/null || true)"; then
        die "a server is already running on $DIR (pid $(head -n 1 "$PIDFILE"))"
    fi
    prepare_dirs
    init_datadir
    rm -f "$PIDFILE"
    # pg_ctl -w waits (bounded by -t) until the server accepts connections.
    as_pg $((READY_SECONDS + 10)) "$BINDIR/pg_ctl" start -w -t "$READY_SECONDS" \
        -D "$DATA" -l "$LOGFILE" \
        -o "-p $PORT -k $DIR/run -c listen_addresses=127.0.0.1" >/dev/null || {
        tail -n 20 "$LOGFILE" >&2 || true
        die "server on $DIR not ready after ${READY_SECONDS}s"
    }
    emit_env "${DB_ENV_FILE:-}" "PG_DIR=$DIR" "PG_HOST=$DIR/run" "PG_PORT=$PORT" \
        "PG_DATADIR=$DATA" "PG_BINDIR=$BINDIR" "PG_LOG=$LOGFILE"
}

stop() {
    pid=$(head -n 1 "$PIDFILE" 2>/dev/null || true)
    if ! pid_alive "$pid"; then
        log "no server running on $DIR"
        return 0
    fi
    # SIGINT is PostgreSQL's "fast" shutdown.
    stop_pid "$pid" INT "$STOP_SECONDS"
    rm -f "$PIDFILE"
}

[ $# -eq 2 ] || { echo "usage: $PROG start|stop DIR" >&2; exit 2; }
DIR=$(abs_dir "$2")
DATA=${DB_DATA_DIR:-$DIR/data}
DATA=${DATA%/}
PIDFILE=$DATA/postmaster.pid
LOGFILE=$DIR/postgres.log
PORT=${PG_PORT:-$(derive_port 25000 "$DIR")}
BINDIR=$(find_bindir)
[ -x "$BINDIR/pg_ctl" ] || die "no PostgreSQL binaries found (set PG_BINDIR)"
case "$1" in
start) start ;;
stop) stop ;;
*) echo "usage: $PROG start|stop DIR" >&2; exit 2 ;;
esac
