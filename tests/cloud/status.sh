#!/bin/bash
# Show the test cloud's services: PID, state, resident memory of the whole
# process group (RSS summed; gunicorn's master and worker share some pages),
# and the listeners on the port range.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

total=0
printf '%-16s %8s %-8s %8s\n' SERVICE PID STATE RSS_MiB
for name in "${SERVICES[@]}"; do
    if pid=$(pid_of "$name"); then
        kib=$(ps --no-headers -o rss= --sid "$pid" | awk '{s += $1} END {print s + 0}')
        total=$((total + kib))
        printf '%-16s %8s %-8s %8d\n' "$name" "$pid" running $((kib / 1024))
    else
        printf '%-16s %8s %-8s %8s\n' "$name" - stopped -
    fi
done
printf '%-16s %8s %-8s %8d\n' total '' '' $((total / 1024))
echo
echo "listeners on 127.0.0.1:$PORT_FIRST-$PORT_LAST (port pid):"
listeners | sort -n | sed 's/^/  /'
