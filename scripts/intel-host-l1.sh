#!/bin/sh
# hvkvm-l1: inside the emulated Intel host, boot Debian's kernel as an L1 guest of hvkvm with
# VMX visible (--cpu host), run a command in it, and exit with that command's status.
#
# Usage: hvkvm-l1 [--cpus N] [--memory MIB] [--timeout SECS] [--console FILE]
#                 [--arg HVKVM_RUN_ARG]... -- CMD...
#
# --console FILE keeps L1's whole console in FILE (for callers that check what L1 printed).
# L1's console is copied to stdout with every line prefixed "L1| ", so L1 output can never be
# mistaken for L0's own. The L1 initramfs is L0's own base image (same /init, modules, hvkvm,
# payloads) plus the command. Exit status: CMD's; hvkvm's own when L1 never reported (124:
# --timeout, in the emulated host's slow guest time); 125 when L1 ended without a report.
set -e
cpus=1
memory=512
timeout=1800
args=
console=
while [ $# -gt 0 ]; do
    case $1 in
    --cpus) cpus=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --console) console=$2; shift 2 ;;
    --arg) args="$args $2"; shift 2 ;;
    --) shift; break ;;
    *) echo "hvkvm-l1: unknown option $1" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "hvkvm-l1: no command (hvkvm-l1 -- hvkvm probe)" >&2; exit 2; }

dir=$(mktemp -d /tmp/l1.XXXXXX)
mkdir -p "$dir/stage/hvkvm"
{
    echo '#!/bin/sh'
    for a in "$@"; do printf "'%s' " "$(printf '%s' "$a" | sed "s/'/'\\\\''/g")"; done
    echo
} >"$dir/stage/hvkvm/command"
chmod 755 "$dir/stage/hvkvm/command"
(cd "$dir/stage" && printf 'hvkvm\nhvkvm/command\n' | cpio -o -H newc 2>/dev/null) >"$dir/cmd.cpio"
cat /opt/hvkvm/l1/initramfs.cpio "$dir/cmd.cpio" >"$dir/initrd.cpio"

cmdline="console=ttyS0 loglevel=4 noxsave nokaslr panic=-1 reboot=k pci=off audit=0"
cmdline="$cmdline cryptomgr.notests mitigations=off hvkvm.role=l1"
[ "$cpus" = 1 ] && cmdline="$cmdline nosmp"
set +e
# shellcheck disable=SC3040 # busybox ash has pipefail: hvkvm's status survives the pipe
set -o pipefail
# --no-reboot: a panic (panic=-1) or a reset ends hvkvm instead of booting L1 again.
# shellcheck disable=SC2086 # $args holds separate hvkvm run options
hvkvm run --kernel /opt/hvkvm/l1/vmlinuz --initrd "$dir/initrd.cpio" --cmdline "$cmdline" \
    --cpu host --cpus "$cpus" --memory "$memory" --timeout "$timeout" --no-reboot $args 2>&1 |
    tee "$dir/console" | sed 's/^/L1| /'
rc=$?
# shellcheck disable=SC3040
set +o pipefail
status=$(sed -n 's/^HVKVM-L1-EXIT: \([0-9]*\).*/\1/p' "$dir/console" | tail -n 1)
[ -n "$console" ] && cp "$dir/console" "$console"
rm -rf "$dir"
if [ -n "$status" ]; then exit "$status"; fi
echo "hvkvm-l1: L1 ended without reporting its command's status (hvkvm exited with $rc)" >&2
[ "$rc" -ne 0 ] && exit "$rc"
exit 125
