#!/usr/bin/env bash
# Boot Debian's kernel with QEMU and with hvkvm side by side inside the emulated Intel host, on
# one vCPU, and print the emulated seconds each took to /init and to poweroff, and their ratio.
#
# Usage: scripts/intel-host-boot-bench.sh [--out DIR] [--memory MIB] [--cmdline TEXT]
#                                         [--timeout SECS] [--no-build]
#
# Both VMMs get the same kernel (the host's Debian cloud kernel, /opt/hvkvm/l1/vmlinuz there),
# the same initramfs (scripts/linux-guest.sh's target/linux-guest/initramfs.cpio, whose /init
# prints "HVKVM-INIT: reached /init" first and powers off last), the same command line and
# RAM (default 512 MiB), `-cpu host`/`--cpu host` and no Hyper-V. QEMU loads the bzImage with
# its own -kernel loader (SeaBIOS, linuxboot ROM, the kernel's decompressor); hvkvm decompresses
# on the host. Times are the emulated host's /proc/uptime at each console line: inside Bochs
# they measure emulated path length, not hardware time. The emulated host's console goes to
# DIR/serial.log (default target/intel-host/boot-bench), the per-VMM logs to DIR/*.log.
#
# Needs scripts/intel-host.sh --qemu (Bochs; QEMU in the image) and scripts/linux-guest.sh.
# Exit status: 0 when both booted to poweroff, 1 otherwise, 125 when the host did not report.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/target/intel-host/boot-bench
MEMORY=512
TIMEOUT=1500
BUILD=()
CMDLINE="console=ttyS0 nokaslr panic=-1 reboot=k pci=off audit=0 cryptomgr.notests loglevel=4 noxsave nosmp"
while [[ $# -gt 0 ]]; do
    case $1 in
    --out) OUT=$2; shift 2 ;;
    --memory) MEMORY=$2; shift 2 ;;
    --cmdline) CMDLINE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --no-build) BUILD=(--no-build); shift ;;
    -h | --help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "intel-host-boot-bench: unknown option $1" >&2; exit 2 ;;
    esac
done
INITRD=$ROOT/target/linux-guest/initramfs.cpio
[[ -f $INITRD ]] || "$ROOT/scripts/linux-guest.sh" "$ROOT/target/linux-guest" >/dev/null
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The command run inside the emulated host; the initramfs travels in it as base64.
script=$OUT/command.sh
{
    cat <<EOF
#!/bin/sh
K=/opt/hvkvm/l1/vmlinuz
D=/tmp/boot-bench
CMDLINE='$CMDLINE'
MEMORY=$MEMORY
EOF
    cat <<'EOF'
mkdir -p $D
base64 -d >$D/initramfs.cpio <<'END_OF_INITRAMFS'
EOF
    base64 -w 76 "$INITRD"
    cat <<'EOF'
END_OF_INITRAMFS
# Runs "$@" and stamps every console line with the emulated host's uptime; prints
# "BOOT-BENCH <name> start <t> init <t> end <t>".
stamp() {
    name=$1; shift
    read -r t0 _ </proc/uptime
    "$@" 2>&1 | while IFS= read -r l; do
        read -r t _ </proc/uptime
        echo "$t $l"
    done >$D/$name.log
    read -r t1 _ </proc/uptime
    init=$(grep -m1 'HVKVM-INIT: reached /init' $D/$name.log | cut -d' ' -f1)
    off=$(grep -c 'HVKVM-INIT: powering off' $D/$name.log)
    echo "BOOT-BENCH $name start $t0 init ${init:-none} end $t1 poweroff $off"
    sed "s/^/$name| /" $D/$name.log | tail -n 40
}
stamp qemu qemu-system-x86_64 -enable-kvm -cpu host -smp 1 -m $MEMORY -nodefaults -no-user-config \
    -nographic -serial stdio -monitor none -no-reboot \
    -kernel $K -initrd $D/initramfs.cpio -append "$CMDLINE"
stamp hvkvm hvkvm run --kernel $K --initrd $D/initramfs.cpio --cmdline "$CMDLINE" --cpu host \
    --cpus 1 --memory $MEMORY --timeout 3000 --no-reboot --stats
EOF
} >"$script"

set +e
"$ROOT/scripts/intel-host.sh" --qemu --quiet "${BUILD[@]}" --out "$OUT" --timeout "$TIMEOUT" \
    --script "$script"
rc=$?
set -e
grep -a 'BOOT-BENCH\|^qemu| \|^hvkvm| ' "$OUT/serial.log" | tr -d '\r' >"$OUT/vmms.log" || true
awk -v host="Bochs corei7_skylake_x (emulated Intel VMX host) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" '
    /^BOOT-BENCH / {
        n = $2; init[n] = ($6 == "none") ? -1 : $6 - $4; end[n] = $8 - $4; off[n] = $10
    }
    END {
        print "intel-host boot bench: same kernel, initramfs, command line, 1 vCPU, emulated seconds"
        print "  host: " host
        printf "  %-6s %12s %14s\n", "VMM", "to /init", "to poweroff"
        ok = 1
        for (i = 1; i <= 2; i++) {
            n = (i == 1) ? "qemu" : "hvkvm"
            if (!(n in end)) { printf "  %-6s %12s %14s\n", n, "-", "no report"; ok = 0; continue }
            printf "  %-6s %12s %14.2f%s\n", n, (init[n] < 0) ? "-" : sprintf("%.2f", init[n]),
                end[n], (off[n] > 0) ? "" : " (did not power off)"
            if (init[n] < 0 || off[n] == 0) ok = 0
        }
        if (("qemu" in end) && ("hvkvm" in end) && init["qemu"] > 0 && init["hvkvm"] > 0)
            printf "  hvkvm / qemu: %.2f to /init, %.2f to poweroff\n",
                init["hvkvm"] / init["qemu"], end["hvkvm"] / end["qemu"]
        exit ok ? 0 : 1
    }' "$OUT/vmms.log" || rc=${rc/#0/1}
exit "$rc"
