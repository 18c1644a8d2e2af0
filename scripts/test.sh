#!/usr/bin/env bash
# The whole hvkvm test suite, runnable on a fresh machine: installs what the tests need
# (Debian's cloud kernel and busybox for the Linux boot tests), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Linux boot tests need Debian's kernel and a busybox initramfs; build them first.
scripts/linux-guest.sh target/linux-guest
export HVKVM_LINUX_DIR="$PWD/target/linux-guest"
# In this script a missing Linux guest is a failure, not a skip.
export HVKVM_REQUIRE_LINUX=1

# Every guest run inside has its own timeout; this outer one only guards against a bug in
# the harness itself.
timeout --signal=KILL 45m cargo test --workspace --locked
