#!/bin/bash
# The floor (c) of bench/freeze-window: the time Cinder itself needs from a
# snapshot request to `available`, with nothing frozen.
#
#   BENCH_TOKEN=... bench/curl-floor.sh CINDER_ENDPOINT VOLUME_ID NAME
#
# A token already in hand (BENCH_TOKEN, in the environment so it is not in
# the process list), one curl POST of the snapshot (force: true), then curl
# GET every 5 ms until the status is available. Prints
# "window_ms=MS snapshot_id=ID posted_ms=MS polls=N start_unix=T" on stdout:
# MS from just before the POST to just after the GET that saw `available`;
# posted_ms is when the POST's 202 had arrived; T the wall clock at the start.
set -euo pipefail

(($# == 3)) || {
    echo "usage: BENCH_TOKEN=... $0 CINDER_ENDPOINT VOLUME_ID NAME" >&2
    exit 2
}
endpoint=${1%/} volume=$2 name=$3
: "${BENCH_TOKEN:?BENCH_TOKEN is not set}"
wait_s=${BENCH_FLOOR_WAIT:-120}

now_us() { echo "${EPOCHREALTIME/./}"; }
ms() { echo "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"; }
api() {
    curl -sS --fail-with-body -H "X-Auth-Token: $BENCH_TOKEN" \
        -H 'OpenStack-API-Version: volume 3.31' -H 'Content-Type: application/json' "$@"
}

body="{\"snapshot\": {\"volume_id\": \"$volume\", \"name\": \"$name\", \"force\": true}}"
start=$(now_us)
reply=$(api -X POST -d "$body" "$endpoint/snapshots")
posted=$(now_us)
re='[{,][[:space:]]*"id":[[:space:]]*"([0-9a-f-]{36})"'
[[ $reply =~ $re ]] || {
    echo "no snapshot id in: $reply" >&2
    exit 1
}
id=${BASH_REMATCH[1]}
polls=0
deadline=$((SECONDS + wait_s))
while :; do
    sleep 0.005
    reply=$(api "$endpoint/snapshots/$id")
    polls=$((polls + 1))
    [[ $reply =~ \"status\":[[:space:]]*\"([a-z_-]+)\" ]] || {
        echo "no status in: $reply" >&2
        exit 1
    }
    status=${BASH_REMATCH[1]}
    [[ $status == available ]] && break
    [[ $status == error* ]] && { echo "snapshot $id: $status" >&2; exit 1; }
    ((SECONDS < deadline)) || { echo "snapshot $id still $status after ${wait_s}s" >&2; exit 1; }
done
end=$(now_us)
echo "window_ms=$(ms $((end - start))) snapshot_id=$id posted_ms=$(ms $((posted - start))) polls=$polls start_unix=${start:0:-6}.${start: -6}"
