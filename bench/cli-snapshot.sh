#!/bin/bash
# Baseline (b) of bench/freeze-window: what a user would write instead of
# volsnap, with the openstack CLI.
#
#   bench/cli-snapshot.sh MOUNT VOLUME_ID NAME
#
# fsfreeze -f MOUNT; openstack volume snapshot create (in-use volume: the
# pinned CLI needs --os-volume-api-version 3.66, see TESTCLOUD.md); poll
# `openstack volume snapshot show` until available (no sleep: each call is
# slow enough); fsfreeze -u. A trap thaws on every exit. Credentials: the
# OS_* environment. Prints "window_ms=MS snapshot_id=ID" on stdout, the
# window timed from just before fsfreeze -f to just after fsfreeze -u.
set -euo pipefail

(($# == 3)) || {
    echo "usage: $0 MOUNT VOLUME_ID NAME" >&2
    exit 2
}
mount=$1 volume=$2 name=$3
wait_s=${BENCH_CLI_WAIT:-120}

frozen=''
thaw() {
    if [[ -n $frozen ]]; then
        fsfreeze -u "$mount" || true
        frozen=''
    fi
}
trap thaw EXIT
trap 'exit 130' INT TERM HUP

now_us() { echo "${EPOCHREALTIME/./}"; }

start=$(now_us)
frozen=1
fsfreeze -f "$mount"
id=$(openstack --os-volume-api-version 3.66 volume snapshot create \
    --volume "$volume" --force -f value -c id "$name")
deadline=$((SECONDS + wait_s))
while :; do
    status=$(openstack --os-volume-api-version 3.66 volume snapshot show -f value -c status "$id")
    [[ $status == available ]] && break
    [[ $status == error* ]] && { echo "snapshot $id: $status" >&2; exit 1; }
    ((SECONDS < deadline)) || { echo "snapshot $id still $status after ${wait_s}s" >&2; exit 1; }
done
fsfreeze -u "$mount"
frozen=''
end=$(now_us)
echo "window_ms=$(((end - start) / 1000)).$(printf '%03d' $(((end - start) % 1000))) snapshot_id=$id"
