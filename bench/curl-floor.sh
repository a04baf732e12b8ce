#!/bin/bash
# The floor (c) of bench/freeze-window: the time Cinder itself needs from the
# snapshot requests to the last `available`, with nothing frozen.
#
#   BENCH_TOKEN=... bench/curl-floor.sh CINDER_ENDPOINT NAME VOLUME_ID...
#
# A token already in hand (BENCH_TOKEN, in the environment so it is not in
# the process list); the snapshot POSTs (force: true, metadata
# bench_run=NAME) all at once, one curl each in the background; once every
# 202 is in, the snapshots are polled, a round every 5 ms at most
# (BENCH_FLOOR_RATE rounds a second, default 200), until all are available.
# How a round polls (BENCH_FLOOR_POLL):
#   auto  (default) `each` for one volume, `list` for more;
#   list  one GET /snapshots/detail?metadata={"bench_run":NAME};
#   each  one GET /snapshots/ID per snapshot, all at once (curl --parallel).
# With one volume, or `list`, ONE curl makes every round over one kept-alive
# connection; `each` with several volumes takes a curl per round.
# Prints on stdout:
#   window_ms=MS snapshot_id=ID,... posted_ms=MS,... available_ms=MS,...
#   polls=N start_unix=T
# window_ms from just before the first POST to just after the poll that saw
# the last `available`; posted_ms when each POST's 202 had arrived and
# available_ms when each was first seen available (from the same start, in
# the order of the VOLUME_IDs); polls the rounds; T the wall clock at the start.
set -euo pipefail

(($# >= 3)) || {
    echo "usage: BENCH_TOKEN=... $0 CINDER_ENDPOINT NAME VOLUME_ID..." >&2
    exit 2
}
endpoint=${1%/} name=$2
shift 2
volumes=("$@")
n=${#volumes[@]}
: "${BENCH_TOKEN:?BENCH_TOKEN is not set}"
wait_s=${BENCH_FLOOR_WAIT:-60}
rate=${BENCH_FLOOR_RATE:-200} # poll rounds per second at most (5 ms apart)
mode=${BENCH_FLOOR_POLL:-auto}
if [[ $mode == auto ]]; then
    ((n == 1)) && mode=each || mode=list
fi
[[ $mode == list || $mode == each ]] || {
    echo "BENCH_FLOOR_POLL: auto, list or each, not $mode" >&2
    exit 2
}

tmp=$(mktemp -d)
trap '[[ -z ${POLL_PID:-} ]] || kill "$POLL_PID" 2>/dev/null; rm -rf "$tmp"' EXIT

now_us() { echo "${EPOCHREALTIME/./}"; }
ms() { echo "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"; }
headers=(-H "X-Auth-Token: $BENCH_TOKEN" -H 'OpenStack-API-Version: volume 3.31'
    -H 'Content-Type: application/json')
api() { curl -sS --fail-with-body "${headers[@]}" "$@"; }

start=${EPOCHREALTIME/./}
for i in "${!volumes[@]}"; do
    body="{\"snapshot\": {\"volume_id\": \"${volumes[$i]}\", \"name\": \"$name-$i\", \"force\": true, \"metadata\": {\"bench_run\": \"$name\"}}}"
    (
        api -X POST -d "$body" "$endpoint/snapshots" >"$tmp/post-$i"
        now_us >"$tmp/posted-$i"
    ) &
done
failed=0
for job in $(jobs -p); do
    wait "$job" || failed=1
done
ids=() posted=()
for i in "${!volumes[@]}"; do
    if ((failed)) || [[ ! -s $tmp/posted-$i ]]; then
        echo "POST of volume ${volumes[$i]}'s snapshot failed: $(cat "$tmp/post-$i" 2>/dev/null)" >&2
        failed=1
        continue
    fi
    read -r -d '' reply <"$tmp/post-$i" || true
    [[ $reply =~ \"id\":\ *\"([0-9a-f-]{36})\" ]] || {
        echo "no snapshot id in: $reply" >&2
        exit 1
    }
    ids+=("${BASH_REMATCH[1]}")
    read -r at <"$tmp/posted-$i"
    posted+=($((at - start)))
done
if ((failed)); then
    # Whatever was created is the caller's to delete (by bench_run or volume).
    exit 1
fi

# How a round reads: one line per snapshot, "ID {json}", into `replies`.
parse_list() {
    local rest=$1 re='"id": *"([0-9a-f-]{36})"(.*)$'
    replies=()
    # One object per snapshot in the list: split on its "id" key.
    while [[ $rest =~ $re ]]; do
        replies+=("${BASH_REMATCH[1]} ${BASH_REMATCH[2]%%\"id\": *\"*}")
        rest=${BASH_REMATCH[2]}
    done
}
polls=0 left=$n done_=() available=()
# Marks what `replies` says; true once every snapshot was seen available.
account() {
    local i r status seen=${EPOCHREALTIME/./}
    polls=$((polls + 1))
    for i in "${!ids[@]}"; do
        [[ -n ${done_[$i]:-} ]] && continue
        status=missing
        for r in "${replies[@]}"; do
            if [[ ${r%% *} == "${ids[$i]}" && $r =~ \"status\":\ *\"([a-z_-]+)\" ]]; then
                status=${BASH_REMATCH[1]}
                break
            fi
        done
        if [[ $status == available ]]; then
            done_[i]=1
            available[i]=$((seen - start))
            left=$((left - 1))
        elif [[ $status == error* || $status == missing ]]; then
            echo "snapshot ${ids[$i]}: $status" >&2
            exit 1
        fi
    done
    ((left == 0))
}

if [[ $mode == list || $n == 1 ]]; then
    # ONE curl for every round: one kept-alive connection, no process per
    # round (on a loaded machine a fork is milliseconds the floor would not
    # owe Cinder); --rate paces the rounds, the URL's fragment (never sent)
    # numbers them, -N hands each answer over as it arrives.
    if [[ $mode == list ]]; then
        url="$endpoint/snapshots/detail?metadata=%7B%22bench_run%22%3A%22$name%22%7D"
    else
        url="$endpoint/snapshots/${ids[0]}"
    fi
    coproc POLL { exec curl -sSN --fail-with-body "${headers[@]}" --rate "${rate}/s" -w '\n' \
        "$url#[1-$((wait_s * rate))]"; }
    while ((left > 0)); do
        IFS= read -r reply <&"${POLL[0]}" || { echo "the polling curl ended early" >&2; exit 1; }
        [[ -z $reply ]] && continue
        if [[ $mode == list ]]; then
            parse_list "$reply"
        else
            replies=("${ids[0]} $reply")
        fi
        account && break
    done
    kill "$POLL_PID" 2>/dev/null || true
else
    # A GET per snapshot per round, all at once, one curl per round.
    exec {pause}<> <(:)
    urls=()
    for id in "${ids[@]}"; do
        urls+=(-o "$tmp/get-$id" "$endpoint/snapshots/$id")
    done
    deadline=$((SECONDS + wait_s))
    while ((left > 0)); do
        read -rt "$(printf '0.%03d' $((1000 / rate)))" -u "$pause" || true
        curl -sS --no-progress-meter --fail-with-body --parallel --parallel-immediate "${headers[@]}" "${urls[@]}"
        replies=()
        for id in "${ids[@]}"; do
            read -r -d '' body <"$tmp/get-$id" || true
            replies+=("$id $body")
        done
        account && break
        ((SECONDS < deadline)) || { echo "snapshots still not available after ${wait_s}s" >&2; exit 1; }
    done
fi
end=${EPOCHREALTIME/./}
join() { local IFS=,; echo "$*"; }
msl() { local x out=(); for x in "$@"; do out+=("$(ms "$x")"); done; join "${out[@]}"; }
echo "window_ms=$(ms $((end - start))) snapshot_id=$(join "${ids[@]}") posted_ms=$(msl "${posted[@]}")" \
    "available_ms=$(msl "${available[@]}") polls=$polls start_unix=${start:0:-6}.${start: -6}"
