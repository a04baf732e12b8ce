#!/bin/bash
# Stop the volsnap test cloud. Idempotent; safe after a crashed up.sh or test.
#
#   tests/cloud/down.sh          stop; keep run/ (logs, volumes) for a look
#   tests/cloud/down.sh --purge  stop and remove run/ except run/cache/
#
# 1. every loop device backed by a file under run/ (volumes, snapshot copies):
#    thaw its filesystems, unmount them, detach the loop device;
# 2. every service up.sh started, by the PID in run/pids/: SIGTERM to its
#    process group (all services at once), a bounded wait, then SIGKILL;
# 3. any listener still on the port range whose command line points into this
#    tests/cloud/ directory (a process whose PID file was lost), the same way.
# Exits non-zero if something still listens on the port range.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

GRACE=${VOLSNAP_TESTCLOUD_STOP_GRACE:-10}

# stop_groups NAME=PID...: TERM each process group led by PID (or PID alone),
# wait up to GRACE seconds for all of them, then KILL what is left.
stop_groups() {
    local entry pid deadline=$((SECONDS + GRACE)) left
    for entry in "$@"; do
        pid=${entry#*=}
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    while :; do
        left=()
        for entry in "$@"; do
            running "${entry#*=}" && left+=("$entry")
        done
        ((${#left[@]})) || return 0
        ((SECONDS < deadline)) || break
        sleep 0.1
    done
    for entry in "${left[@]}"; do
        pid=${entry#*=}
        log "${entry%%=*} ($pid) did not stop in ${GRACE}s: SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
    sleep 0.2
}

release_loops() {
    local dev
    while read -r dev; do
        [[ -n $dev ]] || continue
        log "releasing $dev"
        release_device "$dev" || log "could not detach $dev"
    done < <(loops_under "$RUN")
    rm -f "$ATTACHMENTS"/* 2>/dev/null || true
}

stop_services() {
    local name pid started=()
    for name in "${SERVICES[@]}"; do
        if pid=$(pid_of "$name"); then
            started+=("$name=$pid")
        fi
    done
    ((${#started[@]} == 0)) || stop_groups "${started[@]}"
    rm -f "$PIDS"/*.pid
}

# Listeners on our ports that belong to this checkout but lost their PID file.
stop_strays() {
    local port pid cmd strays=()
    while read -r port pid; do
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        case $cmd in
            *"$CLOUD_DIR"/*)
                log "stray listener on $port: $pid $cmd"
                strays+=("pid=$pid")
                ;;
        esac
    done < <(listeners | sort -u)
    ((${#strays[@]} == 0)) || stop_groups "${strays[@]}"
}

main() {
    local purge=false
    case ${1:-} in
        --purge) purge=true ;;
        "") ;;
        *) die "usage: $0 [--purge]" ;;
    esac
    release_loops
    stop_services
    stop_strays
    if $purge; then
        find "$RUN" -mindepth 1 -maxdepth 1 ! -name cache -exec rm -rf {} + 2>/dev/null || true
    fi
    local busy
    busy=$(listeners)
    [[ -z $busy ]] || die "still listening on $PORT_FIRST-$PORT_LAST (port pid): $busy"
}

main "$@"
