#!/bin/sh
# Run the hook tests: shellcheck of hooks/*, then each datastore's tests
# against real servers (tests/db/install.sh must have run once).
#
#   tests/hooks/run.sh [shellcheck|mysql|postgresql|redis|none|qemu-ga ...]
#
# Prints each test's results and a last line "hooks: N passed, M failed";
# exits non-zero on any failure.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd -P)
ROOT=$(cd "$HERE/../.." && pwd -P)
PASSED=0
FAILED=0
SUITE_SECONDS=${HOOK_SUITE_SECONDS:-900}

shellcheck_hooks() {
    if ! command -v shellcheck >/dev/null; then
        echo "not ok - shellcheck is not installed (run tests/db/install.sh)"
        FAILED=$((FAILED + 1))
        return 0
    fi
    for f in "$ROOT"/hooks/*; do
        [ -x "$f" ] || continue
        if shellcheck --shell=sh "$f"; then
            echo "ok - shellcheck hooks/$(basename "$f")"
            PASSED=$((PASSED + 1))
        else
            echo "not ok - shellcheck hooks/$(basename "$f")"
            FAILED=$((FAILED + 1))
        fi
    done
    if shellcheck -x "$ROOT"/tests/db/*.sh "$ROOT"/tests/hooks/*.sh; then
        echo "ok - shellcheck tests/db tests/hooks"
        PASSED=$((PASSED + 1))
    else
        echo "not ok - shellcheck tests/db tests/hooks"
        FAILED=$((FAILED + 1))
    fi
}

# run_suite NAME: run tests/hooks/NAME.sh, add up its closing line.
run_suite() {
    echo "# === $1"
    log=$(mktemp)
    rc=0
    (cd "$ROOT" && timeout "$SUITE_SECONDS" "$HERE/$1.sh") >"$log" 2>&1 || rc=$?
    cat "$log"
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$log" | tail -n 1 || true)
    last=${last%, * skipped}
    rm -f "$log"
    if [ -n "$last" ]; then
        PASSED=$((PASSED + ${last%% passed*}))
        f=${last#*passed, }
        FAILED=$((FAILED + ${f%% failed}))
    fi
    if [ "$rc" -ne 0 ] && { [ -z "$last" ] || [ "${f%% failed}" -eq 0 ]; }; then
        echo "not ok - $1.sh exited $rc"
        FAILED=$((FAILED + 1))
    fi
}

suites=${*:-shellcheck mysql postgresql redis none qemu-ga}
for s in $suites; do
    case "$s" in
    shellcheck) shellcheck_hooks ;;
    mysql | postgresql | redis | none | qemu-ga) run_suite "$s" ;;
    *) echo "usage: $0 [shellcheck|mysql|postgresql|redis|none|qemu-ga ...]" >&2 && exit 2 ;;
    esac
done
echo "hooks: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
