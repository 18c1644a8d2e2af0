#!/usr/bin/env bash
# Prepare a Debian Linux guest for hvkvm's tests and demos, idempotently.
#
# Usage: scripts/linux-guest.sh [OUT_DIR]        (default OUT_DIR: target/linux-guest)
#
# Outputs, in OUT_DIR:
#   vmlinuz          Debian's linux-image-cloud-amd64 bzImage (newest installed in /boot)
#   initramfs.cpio   an UNCOMPRESSED newc cpio: static busybox, its applet links, /dev (with
#                    console and null nodes), /proc, /sys, and /init (prints HVKVM-* lines,
#                    then powers off)
#
# The kernel command line is hvkvm's own: `hvkvm run` adds what the host's quirks need
# (src/cli/run.rs, quirk_cmdline) to its default or to --cmdline.
#
# Needs root for the package install (apt-get) if linux-image-cloud-amd64 or busybox-static is
# missing; uses only Debian's packages. The cpio archive is written by this script itself (no
# staging tree, no mknod, owner root:root, mtime 0), so it is byte-for-byte reproducible, and
# it is only replaced when its content changes.
set -euo pipefail

OUT=${1:-target/linux-guest}
PACKAGES=(linux-image-cloud-amd64 busybox-static)

log() { printf 'linux-guest: %s\n' "$*" >&2; }
die() { printf 'linux-guest: error: %s\n' "$*" >&2; exit 1; }

# --- 1. packages ------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: run as root, or install them first"
    export DEBIAN_FRONTEND=noninteractive
    log "installing ${missing[*]}"
    # Refresh the package lists only when a package has no install candidate.
    need_update=0
    for p in "${missing[@]}"; do
        cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [[ -z $cand || $cand == "(none)" ]]; then need_update=1; fi
    done
    if ((need_update)); then
        log "apt-get update (a package had no install candidate)"
        apt-get update -q >&2
    fi
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        log "install failed; retrying after apt-get update"
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    fi
fi

BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found after installing busybox-static"
# busybox-static's binary must really be static: the initramfs carries no libc.
if command -v file >/dev/null && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
    die "$BUSYBOX is not statically linked (is busybox-static installed, not busybox?)"
fi

KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-*-cloud-amd64' -type f 2>/dev/null | sort -V | tail -n 1)
[[ -n $KERNEL && -f $KERNEL ]] || die "no /boot/vmlinuz-*-cloud-amd64 after installing linux-image-cloud-amd64"

mkdir -p "$OUT"

# Replace $2 by $1 only when they differ (keeps mtimes stable on a re-run).
install_if_changed() {
    local new=$1 dst=$2
    if [[ -f $dst ]] && cmp -s "$new" "$dst"; then
        rm -f "$new"
    else
        mv -f "$new" "$dst"
        log "wrote $dst"
    fi
}

# --- 2. kernel --------------------------------------------------------------------------------
if [[ -f $OUT/vmlinuz ]] && cmp -s "$KERNEL" "$OUT/vmlinuz"; then
    :
else
    cp -f "$KERNEL" "$OUT/vmlinuz.tmp"
    mv -f "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
    log "wrote $OUT/vmlinuz (from $KERNEL)"
fi

# --- 3. initramfs (newc cpio, written directly) ---------------------------------------------
# newc header: "070701" then 13 fields of 8 hex digits (ino mode uid gid nlink mtime filesize
# devmajor devminor rdevmajor rdevminor namesize check), the NUL-terminated name, padding to a
# multiple of 4, the data, padding to a multiple of 4. The archive ends with "TRAILER!!!".
CPIO_TMP=$OUT/initramfs.cpio.tmp
cpio_ino=1
cpio_pos=0
cpio_pad() { # pad the archive to a multiple of 4
    local n=$(( (4 - cpio_pos % 4) % 4 ))
    if ((n)); then head -c "$n" /dev/zero >>"$CPIO_TMP"; cpio_pos=$((cpio_pos + n)); fi
}
cpio_hdr() { # name mode size rdevmajor rdevminor nlink
    local name=$1 mode=$2 size=$3 rmaj=${4:-0} rmin=${5:-0} nlink=${6:-1}
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
        "$cpio_ino" "$mode" 0 0 "$nlink" 0 "$size" 0 0 "$rmaj" "$rmin" $(( ${#name} + 1 )) 0 \
        "$name" >>"$CPIO_TMP"
    cpio_pos=$((cpio_pos + 110 + ${#name} + 1))
    cpio_ino=$((cpio_ino + 1))
    cpio_pad
}
cpio_dir()  { cpio_hdr "$1" $((0040000 | 0755)) 0 0 0 2; }
cpio_cdev() { cpio_hdr "$1" $((0020000 | $2)) 0 "$3" "$4"; }
cpio_link() { # name target
    cpio_hdr "$1" $((0120000 | 0777)) ${#2}
    printf '%s' "$2" >>"$CPIO_TMP"; cpio_pos=$((cpio_pos + ${#2})); cpio_pad
}
cpio_file() { # name mode source-file
    local size; size=$(stat -L -c %s "$3")
    cpio_hdr "$1" $((0100000 | $2)) "$size"
    cat "$3" >>"$CPIO_TMP"; cpio_pos=$((cpio_pos + size)); cpio_pad
}

# /init: keep it short; every command costs seconds of emulated kernel CPU on the PVM host.
INIT_TMP=$OUT/init.tmp
cat >"$INIT_TMP" <<'EOF'
#!/bin/sh
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "HVKVM-INIT: reached /init"
echo "HVKVM-CPUS: $(grep -c ^processor /proc/cpuinfo)"
cs=unknown
read -r cs </sys/devices/system/clocksource/clocksource0/current_clocksource
echo "HVKVM-CLOCKSOURCE: $cs"
hv=$(dmesg 2>/dev/null | grep -i -m3 hypervisor)
IFS='
'
for l in ${hv:-none found}; do echo "HVKVM-HYPERVISOR: $l"; done
for c in /sys/devices/system/clockevents/clockevent*; do
    read -r d <"$c/current_device"; echo "HVKVM-CLOCKEVENT: ${c##*/} $d"
done
for l in $(grep -E '^ *(HVS|HYP|LOC|TLB|CAL):' /proc/interrupts); do echo "HVKVM-IRQ: $l"; done
for l in $(dmesg | grep -E 'Hyper-V|hv_stimer|remote TLB') ; do echo "HVKVM-HV: $l"; done
read -r cmdline </proc/cmdline
IFS=' '
for w in $cmdline; do
    case $w in
    hvkvm.tlbbench=*) [ -x /bin/tlb_shootdown ] && /bin/tlb_shootdown "${w#*=}" ;;
    hvkvm.execs=*)
        # N runs of `busybox true`, each a fork and exec: the reproducer of the kvm_pvm crash of
        # freshly started programs on 2 vCPUs (README, "Boot time"); hvkvm.execs_pin=1 keeps
        # them all on CPU 0.
        case " $cmdline " in *" hvkvm.execs_pin=1 "*) /bin/busybox taskset -p 1 $$ >/dev/null ;; esac
        n=0 failed=0
        while [ "$n" -lt "${w#*=}" ]; do
            n=$((n + 1)); /bin/busybox true || failed=$((failed + 1))
        done
        echo "HVKVM-EXECS: $n runs, $failed failed" ;;
    hvkvm.idle=*)
        echo "HVKVM-IDLE: begin ${w#*=}"; sleep "${w#*=}"; echo "HVKVM-IDLE: end"
        IFS='
'
        for l in $(grep -E '^ *(HVS|LOC):' /proc/interrupts); do echo "HVKVM-IRQ-IDLE: $l"; done
        IFS=' ' ;;
    esac
done
echo "HVKVM-INIT: powering off"
poweroff -f
EOF

: >"$CPIO_TMP"
for d in bin sbin dev proc sys root tmp; do cpio_dir "$d"; done
cpio_cdev dev/console 0600 5 1
cpio_cdev dev/null 0666 1 3
cpio_file bin/busybox 0755 "$BUSYBOX"
for a in sh ash cat echo grep ls mkdir mount umount dmesg sleep uname; do
    cpio_link "bin/$a" busybox
done
for a in poweroff reboot halt; do cpio_link "sbin/$a" ../bin/busybox; done
cpio_file init 0755 "$INIT_TMP"
rm -f "$INIT_TMP"
# The TLB shootdown benchmark (hvkvm.tlbbench=N), when a static C toolchain is there.
TLB_SRC=$(dirname "$0")/guest/tlb_shootdown.c
if command -v gcc >/dev/null && gcc -static -O2 -pthread -o "$OUT/tlb_shootdown" "$TLB_SRC" 2>/dev/null; then
    cpio_file bin/tlb_shootdown 0755 "$OUT/tlb_shootdown"
else
    log "no static gcc: the initramfs has no tlb_shootdown benchmark"
fi
cpio_hdr "TRAILER!!!" 0 0 0 0 1
cpio_ino=0
# Pad the whole archive to 512 bytes, as cpio(1) does.
n=$(( (512 - cpio_pos % 512) % 512 ))
if ((n)); then head -c "$n" /dev/zero >>"$CPIO_TMP"; fi

# Check the archive with busybox's own cpio reader before installing it.
listing=$("$BUSYBOX" cpio -t <"$CPIO_TMP" 2>/dev/null) || die "busybox cpio cannot read the archive"
for want in init bin/busybox bin/sh sbin/poweroff dev/console proc sys; do
    grep -qx -- "$want" <<<"$listing" || die "initramfs lacks $want"
done
install_if_changed "$CPIO_TMP" "$OUT/initramfs.cpio"

log "kernel: $KERNEL"
printf 'vmlinuz=%s\ninitramfs=%s\n' "$OUT/vmlinuz" "$OUT/initramfs.cpio"
