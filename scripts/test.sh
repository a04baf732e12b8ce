#!/bin/bash
# The project's test command (`make test`): installs what is missing, lints,
# runs every test, and leaves the machine as it found it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "make test needs root: the tests freeze real filesystems on loop devices" >&2
    exit 1
fi

scripts/install-deps.sh

cargo fmt --check
cargo clippy --all-targets -- -D warnings

cargo test --all-targets
