#!/bin/bash
# The project's test command (`make test`): installs what is missing, lints,
# brings the loopback cloud up, runs every test, and brings it down again
# even when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "make test needs root: the tests freeze real filesystems on loop devices" >&2
    exit 1
fi

scripts/install-deps.sh
tests/db/install.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# Build before the cloud is up: the cloud costs memory, the build CPU.
cargo test --workspace --all-targets --no-run
# The static binary, man pages and completions tests/deb.rs packages (its
# `make deb` is then incremental).
make --no-print-directory static gen

trap 'tests/cloud/down.sh' EXIT
tests/cloud/up.sh
tests/cloud/smoke.sh

tests/hooks/run.sh

# shellcheck source=/dev/null
. tests/cloud/run/env.sh
cargo test --workspace --all-targets
