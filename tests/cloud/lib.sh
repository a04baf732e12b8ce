# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the scripts that source this
# Common settings of the volsnap test cloud; sourced by up.sh, down.sh,
# attach.sh, detach.sh and smoke.sh. Not executable on its own.

CLOUD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=$CLOUD_DIR/venv
RUN=$CLOUD_DIR/run
PIDS=$RUN/pids
LOGS=$RUN/logs
VOLUMES=$RUN/volumes
ATTACHMENTS=$RUN/attachments
CACHE=$RUN/cache            # kept across restarts (the extracted memcached)

# Ports: everything on 127.0.0.1, TCP unless noted, inside a range of 50
# from VOLSNAP_TESTCLOUD_PORT_BASE (default 18000). A second cloud on the
# same machine (a worktree of its own, with its own run/) takes another base,
# e.g. 18100; the default cloud is the one make test and make demo use.
# up.sh records the base in run/port-base, so down.sh, status.sh and the
# others find a running cloud's ports without being told again.
PORT_BASE=${VOLSNAP_TESTCLOUD_PORT_BASE:-$(cat "$RUN/port-base" 2>/dev/null || echo 18000)}
[[ $PORT_BASE =~ ^[0-9]+$ ]] && (( PORT_BASE >= 1024 && PORT_BASE <= 65000 )) ||
    { printf 'lib.sh: VOLSNAP_TESTCLOUD_PORT_BASE=%s is not a port in 1024-65000\n' "$PORT_BASE" >&2; exit 78; }
PORT_KEYSTONE=$((PORT_BASE + 0))
PORT_MEMCACHED=$((PORT_BASE + 10))
PORT_SWIFT_LOG=$((PORT_BASE + 19))   # UDP: Swift's syslog datagrams -> logs/swift.log
PORT_SWIFT_PROXY=$((PORT_BASE + 20))
PORT_SWIFT_ACCOUNT=$((PORT_BASE + 21))
PORT_SWIFT_CONTAINER=$((PORT_BASE + 22))
PORT_SWIFT_OBJECT=$((PORT_BASE + 23))
PORT_CINDER=$((PORT_BASE + 30))
PORT_FIRST=$PORT_BASE
PORT_LAST=$((PORT_BASE + 49))

KEYSTONE_URL=http://127.0.0.1:$PORT_KEYSTONE
SWIFT_URL=http://127.0.0.1:$PORT_SWIFT_PROXY
CINDER_URL=http://127.0.0.1:$PORT_CINDER

# Services in start order; down.sh stops them in reverse.
SERVICES=(memcached swift-logsink keystone swift-account swift-container
          swift-object swift-proxy cinder)

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# running PID: true while PID, or any process of the session PID leads, is
# alive. Zombies do not count: they are dead, only not yet reaped by PID 1
# (which can take seconds on these machines).
running() {
    ps --no-headers -o stat= --sid "$1" -p "$1" 2>/dev/null | grep -qv '^Z'
}

# pid_of NAME: the PID recorded for a service, if that process is alive.
pid_of() {
    local pid
    pid=$(cat "$PIDS/$1.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && running "$pid" && echo "$pid"
}

# listeners: "port pid" for every TCP listener on our port range.
listeners() {
    ss -Htlnp "sport >= :$PORT_FIRST and sport <= :$PORT_LAST" 2>/dev/null |
        sed -nE 's/.*:([0-9]+) .*pid=([0-9]+).*/\1 \2/p'
}

# loops_under DIR: loop devices whose backing file is under DIR.
loops_under() {
    local dev file
    losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null |
        while read -r dev file; do
            case $file in "$1"/*) echo "$dev" ;; esac
        done
}

# release_device DEV: thaw (in case), unmount every mount, detach the loop.
# Fails if the loop device cannot be detached.
release_device() {
    local dev=$1 target
    while read -r target; do
        [[ -n $target ]] || continue
        fsfreeze -u "$target" 2>/dev/null || true
        umount "$target" || umount -l "$target" || true
    done < <(findmnt --list --noheadings --output TARGET --source "$dev" 2>/dev/null | sort -r)
    losetup -d "$dev"
}

ctl() { "$VENV/bin/python" "$CLOUD_DIR/py/testcloud_ctl.py" "$@"; }
