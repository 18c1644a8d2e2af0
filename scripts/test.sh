#!/usr/bin/env bash
# The whole hvkvm test suite, runnable on a fresh machine: installs what the tests need
# (Debian's cloud kernel and busybox for the Linux boot tests, Bochs and its companions for the
# emulated Intel host), then runs every test, on this machine's KVM and inside the emulated
# Intel host.
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean run writes ~4 GiB under target/. On a full disk the build fails, and the emulated
# Intel host's serial log silently stops growing until its timeout: say so up front.
read -r free_kib mount_point < <(df -Pk . | awk 'NR == 2 { print $4, $6 }')
if ((free_kib < 6 * 1024 * 1024)); then
    echo "test.sh: warning: only $((free_kib / 1024)) MiB free on $mount_point;" \
        "a clean run needs ~4 GiB (target/); free some space if the build or the emulated Intel" \
        "host fails" >&2
fi

# The Linux boot tests need Debian's kernel and a busybox initramfs; build them first.
scripts/linux-guest.sh target/linux-guest
export HVKVM_LINUX_DIR="$PWD/target/linux-guest"
# In this script a missing prerequisite is a failure, not a skip: the Linux guest, /dev/kvm,
# the emulated Intel host, the real tools hv-model exports for.
export HVKVM_REQUIRE_LINUX=1 HVKVM_REQUIRE_KVM=1 HVKVM_REQUIRE_INTEL_HOST=1
# hv-model's real-tool checks (QEMU, libvirt, the KubeVirt and Proxmox descriptions) install
# their Debian and npm packages; here a missing one fails instead of skipping.
export HVKVM_REQUIRE_TOOLS=1

# Everything is built before anything runs: the emulated Intel host's image (release build of
# hvkvm and hvkvm-suites), then the tests.
scripts/intel-host.sh --prepare
cargo test --workspace --locked --no-run

# The emulated Intel host runs every suite in one boot, in the background, while the local
# tests run; tests/intel_host.rs reports its cases at the end. There are two emulated hosts
# (`hvkvm-suites sessions` lists them with their intel-host.sh options): `intel-host`, one CPU,
# with QEMU in it (--qemu) for the qemu suite, which compares hvkvm's guest CPUID with QEMU's;
# and `intel-host-2cpu`, two CPUs, for the 2-vCPU L1 Linux guest. Bochs keeps one core busy, so
# the two sessions and the 2-vCPU Linux boot here run one after the other (each takes
# guest_tests::host_cores' lock); the 1-vCPU Linux boot runs beside them.
sessions=$PWD/target/intel-host/ci-sessions
rm -rf "$sessions" && mkdir -p "$sessions"
HVKVM_INTEL_HOST_TIMEOUT=${HVKVM_INTEL_HOST_TIMEOUT:-1500}
hosts=$(target/release/hvkvm-suites sessions)
session_pids=()
while read -r host options; do
    mkdir -p "$sessions/$host"
    # shellcheck disable=SC2086 # the options are words
    scripts/intel-host.sh --quiet --no-install --no-build $options --out "$sessions/$host" \
        --timeout "$HVKVM_INTEL_HOST_TIMEOUT" -- hvkvm-suites run --host "$host" \
        >"$sessions/$host/script.log" 2>&1 &
    session_pids+=($!)
done <<<"$hosts"
# If this script stops early, stop the sessions (their own trap ends Bochs).
trap 'kill "${session_pids[@]}" 2>/dev/null || true' EXIT
export HVKVM_INTEL_HOST_SESSION=$sessions

# Every guest run inside has its own timeout; this outer one only guards against a bug in
# the harness itself.
status=0
timeout --signal=KILL 45m cargo test --workspace --locked --no-fail-fast -- \
    --skip intel-host/ --skip intel-host-2cpu/ || status=$?
cargo test -p guest-tests --locked --test intel_host || status=$?
exit "$status"
