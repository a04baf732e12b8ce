#!/bin/sh
# Start or stop a throw-away Redis server for the tests, run by hand as root
# (no systemd): `redis.sh start DIR` / `redis.sh stop DIR`.
#
# Layout under DIR (DIR may be the root of a mounted loop filesystem):
#   DIR/data/dump.rdb    the RDB file (dir + dbfilename)
#   DIR/redis.sock       the unix socket
#   DIR/redis.pid        the pid file
#   DIR/redis.log        the log
# Port: $REDIS_PORT, or derived from DIR (26000-26999); bound to 127.0.0.1.
# $DB_DATA_DIR puts the RDB's directory elsewhere (e.g. on a data volume while
# socket, pid file and log stay in DIR).
# Prints the connection info as shell assignments on stdout, and writes them
# to $DB_ENV_FILE too when it is set.
set -eu
PROG=redis.sh
# shellcheck source=tests/db/lib.sh
. "$(dirname "$0")/lib.sh"

READY_SECONDS=${DB_READY_SECONDS:-30}
STOP_SECONDS=${DB_STOP_SECONDS:-30}

ping_server() {
    [ "$(timeout 5 redis-cli -s "$SOCK" ping 2>/dev/null)" = PONG ]
}

start() {
    if pid_alive "$(cat "$PIDFILE" 2>/dev/null || true)"; then
        die "a server is already running on $DIR (pid $(cat "$PIDFILE"))"
    fi
    rm -f "$PIDFILE" "$SOCK"
    mkdir -p "$DATA"
    timeout 30 redis-server --daemonize yes --port "$PORT" --bind 127.0.0.1 \
        --unixsocket "$SOCK" --unixsocketperm 700 --dir "$DATA" \
        --dbfilename dump.rdb --pidfile "$PIDFILE" --logfile "$DIR/redis.log" \
        </dev/null >/dev/null 2>&1 || die "redis-server failed to start"
    n=$((READY_SECONDS * 10))
    until ping_server; do
        n=$((n - 1))
        if [ "$n" -le 0 ]; then
            tail -n 20 "$DIR/redis.log" >&2 || true
            die "server on $DIR not ready after ${READY_SECONDS}s"
        fi
        sleep 0.1
    done
    emit_env "${DB_ENV_FILE:-}" "REDIS_DIR=$DIR" "REDIS_SOCKET=$SOCK" \
        "REDIS_PORT=$PORT" "REDIS_RDB_PATH=$DATA/dump.rdb" "REDIS_PIDFILE=$PIDFILE"
}

stop() {
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    if ! pid_alive "$pid"; then
        log "no server running on $DIR"
        return 0
    fi
    # SIGTERM: Redis saves the RDB first when save points are configured.
    stop_pid "$pid" TERM "$STOP_SECONDS"
    rm -f "$PIDFILE"
}

[ $# -eq 2 ] || { echo "usage: $PROG start|stop DIR" >&2; exit 2; }
DIR=$(abs_dir "$2")
DATA=${DB_DATA_DIR:-$DIR/data}
DATA=${DATA%/}
SOCK=$DIR/redis.sock
PIDFILE=$DIR/redis.pid
PORT=${REDIS_PORT:-$(derive_port 26000 "$DIR")}
case "$1" in
start) start ;;
stop) stop ;;
*) echo "usage: $PROG start|stop DIR" >&2; exit 2 ;;
esac
