#!/usr/bin/env bash
# Run a command inside an emulated Intel VMX host: Bochs (CPU model corei7_skylake_x) boots
# Debian's cloud kernel, loads kvm and `kvm-intel nested=1`, and runs the command with hvkvm,
# its test payloads and Debian's kernel for L1 guests at hand. No terminal, no human.
#
# Usage: scripts/intel-host.sh [OPTIONS] -- COMMAND [ARG...]
#        scripts/intel-host.sh [OPTIONS] --script FILE
#        scripts/intel-host.sh --prepare       install, build and cache the image; boot nothing
#
#   --out DIR         keep this run's files in DIR: serial.log (the guest's console), bochs.log,
#                     exit-status (written last), pid (this script's PID while it runs)
#                     (default: target/intel-host/last)
#   --timeout SECS    wall-clock limit from Bochs' start, boot included (default 900); the
#                     emulated host's own clocks run slower than wall time, so it is kept here
#                     (waiting for the host-cores lock, below, does not count)
#   --memory MIB      RAM of the emulated host, at most 2048 (default 2048)
#   --cpus N          processors of the emulated host, 1 to 4 (default 1). Bochs runs them all
#                     on one host thread, so each is 1/N as fast. An L1 guest needs as many:
#                     a 2-vCPU L1 on one emulated CPU did not boot within 10 minutes
#   --quiet           do not copy the serial log to stdout while it runs
#   --qemu            also put Debian's QEMU in the host (qemu-system-x86_64 on PATH, with
#                     SeaBIOS and the -kernel loaders' option ROMs; KVM only, no display, no
#                     NIC ROMs): the peer to compare hvkvm with. ~15 MB more to load and
#                     ~50 MB to unpack: a few seconds of boot (52-55 s to the first command
#                     against ~48 s without); off by default so boot times stay comparable.
#                     (the qemu suite's six QEMU and six hvkvm runs take ~35 s)
#   --no-install      fail, naming the packages, instead of installing them
#   --no-build        use target/release/{hvkvm,hvkvm-suites} as they are
#
# Inside: PATH has /opt/hvkvm/bin (hvkvm, hvkvm-suites, hvkvm-l1), the payloads are in
# /opt/hvkvm/guest ($HVKVM_GUEST_DIR), /dev/kvm is KVM on Bochs' VMX, and `hvkvm-l1 -- CMD`
# boots Debian's kernel as an L1 guest of hvkvm (--cpu host) and runs CMD inside it.
#
# Exit status: COMMAND's own; 124 when the timeout expired; 125 when the image could not be
# built or the emulated host ended without reporting (the last serial lines are printed).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/intel-host-image.sh
source "$ROOT/scripts/intel-host-image.sh"

OUT=$ROOT/target/intel-host/last
TIMEOUT=900
MEMORY=2048
CPUS=1
QUIET=0
QEMU_IN_HOST=0
INSTALL=1
BUILD=1
SCRIPT=
PREPARE=0
while (($#)); do
    case $1 in
    --out) OUT=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --memory) MEMORY=$2; shift 2 ;;
    --cpus) CPUS=$2; shift 2 ;;
    --quiet) QUIET=1; shift ;;
    --qemu) QEMU_IN_HOST=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --script) SCRIPT=$2; shift 2 ;;
    --prepare) PREPARE=1; shift ;;
    --) shift; break ;;
    -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ -n $SCRIPT || $# -gt 0 || $PREPARE -eq 1 ]] ||
    die "no command: scripts/intel-host.sh -- hvkvm probe"
[[ $TIMEOUT =~ ^[0-9]+$ && $MEMORY =~ ^[0-9]+$ ]] || die "--timeout and --memory take numbers"
((MEMORY >= 256 && MEMORY <= 2048)) || die "--memory must lie in 256..2048 (Bochs' limit)"
[[ $CPUS =~ ^[1-4]$ ]] || die "--cpus takes 1 to 4, not '$CPUS'"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/exit-status" "$OUT/serial.log" "$OUT/bochs.log"
echo $$ >"$OUT/pid"
mkdir -p "$ROOT/target/intel-host"
RUN=$(mktemp -d "$ROOT/target/intel-host/run.XXXXXX")
BOCHS_PID=
TAIL_PID=
status=125
# shellcheck disable=SC2317 # run by the EXIT trap
finish() {
    if [[ -n $BOCHS_PID ]]; then stop_bochs; fi
    if [[ -n $TAIL_PID ]]; then kill "$TAIL_PID" 2>/dev/null || true; fi
    rm -rf "$RUN"
    # exit-status before pid goes: a follower that sees neither takes the script for dead.
    echo "$status" >"$OUT/exit-status"
    rm -f "$OUT/pid"
}
# SIGTERM, then SIGKILL: one Bochs outlived SIGTERM by 40 minutes (its disk was full), holding
# the host-cores lock it inherited and a core.
stop_bochs() {
    kill "$BOCHS_PID" 2>/dev/null || return 0
    bochs_ends_within_5s && return 0
    log "Bochs ($BOCHS_PID) ignored SIGTERM for 5 s; sending SIGKILL"
    kill -KILL "$BOCHS_PID" 2>/dev/null || true
}
bochs_ends_within_5s() {
    for _ in $(seq 20); do kill -0 "$BOCHS_PID" 2>/dev/null || return 0; sleep 0.25; done
    return 1
}
trap finish EXIT
trap 'status=130; exit 130' INT TERM

# --- 1. the image ----------------------------------------------------------------------------
# Sessions started together (one per emulated host, tests/intel_host.rs) build one at a time:
# the first builds the cached image, the others find it ready.
exec 8>"$ROOT/target/intel-host/build.lock"
flock 8
((INSTALL)) && install_packages
check_prerequisites
((BUILD)) && build_binaries
build_base_image # cached under target/intel-host/image/
if ((PREPARE)); then status=0; exit 0; fi

# The command becomes /hvkvm/command, a third initramfs archive that the kernel unpacks on top
# of the other two, so the cached parts stay as they are.
mkdir -p "$RUN/cmd/hvkvm"
if [[ -n $SCRIPT ]]; then
    cp "$SCRIPT" "$RUN/cmd/hvkvm/command"
else
    { printf '#!/bin/sh\n'; for a in "$@"; do sh_quote "$a"; printf ' '; done; printf '\n'; } \
        >"$RUN/cmd/hvkvm/command"
fi
chmod 755 "$RUN/cmd/hvkvm/command"
pack_tree "$RUN/cmd" "$RUN/cmd.cpio"
make_iso "$RUN/cmd.cpio" "$RUN/intel-host.iso" "$QEMU_IN_HOST"
flock -u 8

# --- 2. Bochs --------------------------------------------------------------------------------
write_bochsrc "$RUN" "$MEMORY" "$OUT/serial.log" "$OUT/bochs.log" "$RUN/intel-host.iso" "$CPUS"
: >"$OUT/serial.log"
if ((!QUIET)); then
    tail -n +1 -f "$OUT/serial.log" &
    TAIL_PID=$!
fi

# One Bochs run at a time per machine, and never beside a guest that needs both host cores
# (guest_tests::host_cores): Bochs keeps one core busy the whole time.
exec 9>"${HVKVM_CORES_LOCK:-/tmp/hvkvm-cores.lock}"
if ! flock -n 9; then
    log "waiting for the host-cores lock (${HVKVM_CORES_LOCK:-/tmp/hvkvm-cores.lock})"
    flock 9
fi
start=$SECONDS
# The term display needs a terminal: `script` gives Bochs a pseudo-terminal, stdin is empty.
script -qfec "$RUN/bochs.sh" /dev/null </dev/null >"$RUN/screen.out" 2>&1 &
wait_for_file "$RUN/bochs.pid" 10 || die "Bochs did not start: $(tail -n 5 "$RUN/screen.out")"
BOCHS_PID=$(cat "$RUN/bochs.pid")

# --- 3. wait for the command's report, a kernel panic, Bochs' end or the timeout -----------
outcome=
while :; do
    if report=$(grep -a -m1 '^HVKVM-L0-EXIT: [0-9]*' "$OUT/serial.log"); then
        outcome=reported
        break
    fi
    # L0's own panic only: an L1 guest's console lines start with "L1| ".
    if grep -a -q '^\[[ 0-9.]*\] Kernel panic - not syncing' "$OUT/serial.log"; then
        outcome=panic
        break
    fi
    if ! kill -0 "$BOCHS_PID" 2>/dev/null; then outcome=ended; break; fi
    if ((SECONDS - start >= TIMEOUT)); then outcome=timeout; break; fi
    sleep 0.5
done
elapsed=$((SECONDS - start))
# After its report the host powers itself off; give Bochs a moment to flush and exit.
bochs_ends_within_5s || stop_bochs
BOCHS_PID=
flock -u 9
if [[ -n $TAIL_PID ]]; then sleep 0.3; kill "$TAIL_PID" 2>/dev/null || true; TAIL_PID=; fi

case $outcome in
reported)
    status=$(tr -dc '0-9' <<<"${report#HVKVM-L0-EXIT: }")
    log "command exited with status $status after ${elapsed} s in the emulated Intel host"
    ;;
timeout)
    status=124
    last_lines "$OUT/serial.log" "timed out after ${TIMEOUT} s (--timeout)"
    ;;
panic)
    status=125
    last_lines "$OUT/serial.log" "the emulated host's kernel panicked"
    ;;
*)
    status=125
    last_lines "$OUT/serial.log" "Bochs ended after ${elapsed} s without the command's report"
    grep -a -E '^[0-9]+[ep]\[' "$OUT/bochs.log" 2>/dev/null | tail -n 5 >&2 || true
    ;;
esac
exit "$status"
