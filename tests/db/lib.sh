# shellcheck shell=sh
# Helpers shared by tests/db/{mariadb,postgres,redis}.sh (sourced, not run).

die() {
    echo "$PROG: $*" >&2
    exit 1
}

log() {
    echo "$PROG: $*" >&2
}

# derive_port BASE DIR: a port in [BASE, BASE+999] derived from DIR, so that
# servers started on different directories do not collide; a port in use in
# any state is skipped for the next one. The range must lie below Linux's
# ephemeral ports: inside them an outgoing connection (a test's HTTP client)
# can take the port between this check and the bind ("Address already in
# use" on 36990, and on 33092 in CI on 2026-12-04), so a base that reaches
# them is refused.
derive_port() {
    ephemeral=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ $(($1 + 999)) -lt "$ephemeral" ] ||
        die "derive_port: $1-$(($1 + 999)) reaches the ephemeral ports (from $ephemeral)"
    sum=$(printf '%s' "$2" | cksum | cut -d' ' -f1)
    port=$(($1 + sum % 1000))
    tries=0
    while [ "$tries" -lt 1000 ] && [ -n "$(ss -Hant "( sport = :$port )" 2>/dev/null)" ]; do
        port=$(($1 + (port - $1 + 1) % 1000))
        tries=$((tries + 1))
    done
    echo "$port"
}

# abs_dir DIR: DIR as an absolute path (created if missing).
abs_dir() {
    mkdir -p "$1"
    (cd "$1" && pwd -P)
}

# pid_alive PID: exists and is not a zombie (the servers are detached, and
# PID 1 may take its time to reap them).
pid_alive() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
    state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2>/dev/null || true)
    [ "$state" != Z ]
}

# wait_gone PID SECONDS: poll until PID has exited; 1 if it is still there.
wait_gone() {
    n=$(($2 * 10))
    while [ "$n" -gt 0 ]; do
        pid_alive "$1" || return 0
        sleep 0.1
        n=$((n - 1))
    done
    ! pid_alive "$1"
}

# stop_pid PID SIGNAL SECONDS: send SIGNAL, wait up to SECONDS, then KILL
# the process and its direct children.
stop_pid() {
    pid_alive "$1" || return 0
    kill "-$2" "$1" 2>/dev/null || true
    wait_gone "$1" "$3" && return 0
    log "pid $1 still running after ${3}s, sending KILL"
    children=$(pgrep -P "$1" 2>/dev/null || true)
    # shellcheck disable=SC2086 # list of pids
    kill -KILL "$1" $children 2>/dev/null || true
    wait_gone "$1" 5 || die "pid $1 survived KILL"
}

# emit_env FILE KEY=VALUE...: print the connection info on stdout and, when
# FILE is not empty, write it there too (shell-sourceable, values quoted).
emit_env() {
    file=$1
    shift
    out=
    for kv in "$@"; do
        out="$out${kv%%=*}='${kv#*=}'
"
    done
    printf '%s' "$out"
    if [ -n "$file" ]; then
        printf '%s' "$out" >"$file.tmp" && mv "$file.tmp" "$file"
    fi
}
