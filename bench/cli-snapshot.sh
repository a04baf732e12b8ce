#!/bin/bash
# Baseline (b) of bench/freeze-window: what a user would write instead of
# volsnap, with the openstack CLI.
#
#   bench/cli-snapshot.sh NAME MOUNT VOLUME_ID [MOUNT VOLUME_ID]...
#
# fsfreeze -f every MOUNT; then for each volume in turn, as a user would write
# it: openstack volume snapshot create (in-use volume: the pinned CLI needs
# --os-volume-api-version 3.66, see TESTCLOUD.md) and poll `openstack volume
# snapshot show` until available (no sleep: each call is slow enough); then
# fsfreeze -u every MOUNT. A trap thaws on every exit. Credentials: the OS_*
# environment. Prints "window_ms=MS snapshot_id=ID[,ID]..." on stdout, the
# window timed from just before the first fsfreeze -f to just after the last
# fsfreeze -u.
set -euo pipefail

(($# >= 3 && $# % 2 == 1)) || {
    echo "usage: $0 NAME MOUNT VOLUME_ID [MOUNT VOLUME_ID]..." >&2
    exit 2
}
name=$1
shift
mounts=() volumes=()
while (($#)); do
    mounts+=("$1") volumes+=("$2")
    shift 2
done
wait_s=${BENCH_CLI_WAIT:-120}

frozen=()
thaw() {
    local m
    for m in "${frozen[@]}"; do
        fsfreeze -u "$m" || true
    done
    frozen=()
}
trap thaw EXIT
trap 'exit 130' INT TERM HUP

now_us() { echo "${EPOCHREALTIME/./}"; }

start=$(now_us)
for m in "${mounts[@]}"; do
    frozen+=("$m")
    fsfreeze -f "$m"
done
ids=()
for i in "${!volumes[@]}"; do
    id=$(openstack --os-volume-api-version 3.66 volume snapshot create \
        --volume "${volumes[$i]}" --force -f value -c id "$name-$i")
    ids+=("$id")
    deadline=$((SECONDS + wait_s))
    while :; do
        status=$(openstack --os-volume-api-version 3.66 volume snapshot show -f value -c status "$id")
        [[ $status == available ]] && break
        [[ $status == error* ]] && { echo "snapshot $id: $status" >&2; exit 1; }
        ((SECONDS < deadline)) || { echo "snapshot $id still $status after ${wait_s}s" >&2; exit 1; }
    done
done
for m in "${mounts[@]}"; do
    fsfreeze -u "$m"
done
frozen=()
end=$(now_us)
echo "window_ms=$(((end - start) / 1000)).$(printf '%03d' $(((end - start) % 1000))) snapshot_id=$(IFS=,; echo "${ids[*]}")"
