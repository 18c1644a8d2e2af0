# shellcheck shell=bash
# Functions of scripts/intel-host.sh that build the emulated Intel host's boot image.
# Sourced, not run. Everything cacheable lives in target/intel-host/image/.
#
# The initramfs is three newc archives that the kernel unpacks in order:
#   base.img  /init, busybox, the kvm modules, hvkvm and hvkvm-suites with their shared
#             libraries, the payloads, hvkvm-l1       (also the L1 guest's whole initramfs)
#   l1.img    /opt/hvkvm/l1/{vmlinuz,initramfs.cpio}: what hvkvm-l1 boots as L1
#   cmd.img   /hvkvm/command, written per run
#   qemu.img  Debian's QEMU (qemu-system-x86_64, its shared libraries, SeaBIOS and the option
#             ROMs a -kernel boot needs), zstd-compressed, last: the peer to compare hvkvm with
#             inside the Intel host. Always built (cached), booted only with intel-host.sh
#             --qemu; never part of L1's initramfs.
# isolinux loads them from an ISO (Bochs boots the CD-ROM through its BIOS).

IMAGE_PACKAGES=(bochs bochsbios bochs-term isolinux syslinux-common xorriso busybox-static
    linux-image-cloud-amd64 qemu-system-x86 seabios zstd)
BOCHS_BIOS=/usr/share/bochs/BIOS-bochs-latest
VGA_BIOS=/usr/share/bochs/VGABIOS-lgpl-latest
ISOLINUX_BIN=/usr/lib/ISOLINUX/isolinux.bin
LDLINUX_C32=/usr/lib/syslinux/modules/bios/ldlinux.c32
BUSYBOX=/bin/busybox
QEMU=/usr/bin/qemu-system-x86_64
# What QEMU reads at run time for `-nodefaults -vga none -kernel ...` with KVM: the BIOS and
# the option ROMs of its Linux, multiboot and PVH loaders and of the vAPIC (no NIC ROMs, no
# VGA BIOS, no TCG module). They keep their paths: QEMU looks for them next to its binary.
QEMU_FIRMWARE=(/usr/share/seabios/bios-256k.bin /usr/share/qemu/linuxboot_dma.bin
    /usr/share/qemu/linuxboot.bin /usr/share/qemu/multiboot_dma.bin /usr/share/qemu/multiboot.bin
    /usr/share/qemu/pvh.bin /usr/share/qemu/kvmvapic.bin)
IMAGE=${ROOT:?}/target/intel-host/image
TARGET_RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release

log() { printf 'intel-host: %s\n' "$*" >&2; }
die() { printf 'intel-host: error: %s\n' "$*" >&2; exit 125; }

# Prints $1 single-quoted for sh.
sh_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# Waits up to $2 seconds for file $1 to exist and be non-empty.
wait_for_file() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do [[ -s $1 ]] && return 0; sleep 0.1; done
    return 1
}

# Prints the last serial lines of log $1 after the headline $2, to stderr.
last_lines() {
    log "$2; the last lines of the emulated host's console ($1):"
    tr -d '\r' <"$1" | tail -n 25 | sed 's/^/    | /' >&2
}

missing_packages() {
    local p
    for p in "${IMAGE_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
            printf '%s\n' "$p"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]})) || return 0
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}: run as root, or apt-get install them first"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
        "${missing[@]}" >&2; then
        log "install failed; retrying after apt-get update"
        apt-get -o DPkg::Lock::Timeout=300 update -q >&2
        apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >&2
    fi
}

# Sets KERNEL and KVER, or dies naming what is missing.
check_prerequisites() {
    local f missing
    missing=$(missing_packages | tr '\n' ' ')
    [[ -z $missing ]] || die "missing packages: ${missing}(apt-get install them, or drop --no-install)"
    for f in "$BOCHS_BIOS" "$VGA_BIOS" "$ISOLINUX_BIN" "$LDLINUX_C32" "$BUSYBOX" "$QEMU" \
        "${QEMU_FIRMWARE[@]}"; do
        [[ -f $f ]] || die "$f is missing"
    done
    KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-*-cloud-amd64' -type f | sort -V | tail -n 1)
    [[ -n $KERNEL ]] || die "no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64)"
    KVER=${KERNEL#/boot/vmlinuz-}
    [[ -f /lib/modules/$KVER/kernel/arch/x86/kvm/kvm-intel.ko ]] ||
        die "no kvm-intel.ko for $KVER in /lib/modules"
}

# hvkvm runs at emulated speed in there: build it optimised.
build_binaries() {
    log "building hvkvm and hvkvm-suites (release)"
    (cd "$ROOT" && cargo build --release --locked -q -p hvkvm --bin hvkvm \
        -p guest-tests --bin hvkvm-suites) || die "cargo build --release failed"
}

# Writes the newc archive of directory $1 (owner root, all files) to $2. The kernel needs
# /dev/console before /init runs; a node needs no root to be described, so it is appended as a
# second archive written here rather than created with mknod.
pack_tree() {
    local dir=$1 out=$2 size
    (cd "$dir" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort |
        "$BUSYBOX" cpio -o -H newc 2>/dev/null) >"$out.tmp"
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0\0\0' \
        1 $((0020000 | 0600)) 0 0 1 0 0 0 0 5 1 12 0 dev/console >>"$out.tmp"
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0\0\0\0' \
        0 0 0 0 1 0 0 0 0 0 0 11 0 'TRAILER!!!' >>"$out.tmp"
    size=$(stat -c %s "$out.tmp")
    ((size % 4 == 0)) || die "internal: $out is not 4-byte aligned"
    mv -f "$out.tmp" "$out"
}

# The payload directory compiled into hvkvm-suites.
guest_dir() { "$TARGET_RELEASE/hvkvm-suites" guest-dir; }

# Copies executable $1 and the shared libraries ldd names for it into tree $2, the executable
# to $3 (default /opt/hvkvm/bin/NAME).
copy_with_libraries() {
    local exe=$1 tree=$2 dest=${3:-/opt/hvkvm/bin/$(basename "$1")} lib
    install -D -m 755 "$exe" "$tree$dest"
    for lib in $(ldd "$exe" | grep -o '/[^ ]*'); do
        mkdir -p "$tree$(dirname "$lib")"
        cp -L -f "$lib" "$tree$lib"
    done
}

# Builds target/intel-host/image/{base.img,l1.img,vmlinuz} unless its inputs are unchanged.
build_base_image() {
    local hvkvm=$TARGET_RELEASE/hvkvm suites=$TARGET_RELEASE/hvkvm-suites gdir stamp
    [[ -x $hvkvm && -x $suites ]] || die "no $hvkvm or $suites: build them (drop --no-build)"
    gdir=$(guest_dir) || die "$suites guest-dir failed"
    mkdir -p "$IMAGE"
    exec 8>"$IMAGE/.lock"
    flock 8 # two runs may start at once (a CI session and a test)
    stamp=$( (cd "$ROOT/scripts" && cat intel-host-image.sh intel-host-init.sh intel-host-l1.sh)
        stat -L -c '%n %s %Y' "$KERNEL" "$hvkvm" "$suites" "$BUSYBOX" "$gdir"/* "$QEMU" \
            "${QEMU_FIRMWARE[@]}" 2>/dev/null
    ) && stamp=$(sha256sum <<<"$stamp" | cut -d' ' -f1)
    if [[ -f $IMAGE/stamp && $(cat "$IMAGE/stamp") == "$stamp" && -f $IMAGE/l1.img &&
        -f $IMAGE/qemu.img ]]; then
        flock -u 8
        return 0
    fi
    log "building the boot image in $IMAGE"
    local tree=$IMAGE/tree mods=/lib/modules/$KVER/kernel f a
    rm -rf "$tree" && mkdir -p "$tree"/{bin,dev,proc,sys,tmp,opt/hvkvm/guest}
    install -m 755 "$ROOT/scripts/intel-host-init.sh" "$tree/init"
    cp "$BUSYBOX" "$tree/bin/busybox"
    for a in $("$BUSYBOX" --list); do [[ $a == busybox ]] || ln -s busybox "$tree/bin/$a"; done
    for f in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-intel.ko; do
        install -D -m 644 "$mods/$f" "$tree/lib/modules/$KVER/kernel/$f"
    done
    copy_with_libraries "$hvkvm" "$tree"
    copy_with_libraries "$suites" "$tree"
    install -m 755 "$ROOT/scripts/intel-host-l1.sh" "$tree/opt/hvkvm/bin/hvkvm-l1"
    # Payloads are the extension-less executables; the rest of that directory is cargo's.
    for f in "$gdir"/*; do
        [[ -f $f && -x $f && $(basename "$f") != *.* ]] && cp "$f" "$tree/opt/hvkvm/guest/"
    done
    [[ -f $tree/opt/hvkvm/guest/boot_contract ]] || die "no payloads found in $gdir"
    pack_tree "$tree" "$IMAGE/base.img"
    rm -rf "$IMAGE/l1tree" && mkdir -p "$IMAGE/l1tree/opt/hvkvm/l1"
    cp "$KERNEL" "$IMAGE/l1tree/opt/hvkvm/l1/vmlinuz"
    cp "$IMAGE/base.img" "$IMAGE/l1tree/opt/hvkvm/l1/initramfs.cpio"
    pack_tree "$IMAGE/l1tree" "$IMAGE/l1.img"
    cp "$KERNEL" "$IMAGE/vmlinuz"
    build_qemu_image "$IMAGE/qemu.img"
    rm -rf "$tree" "$IMAGE/l1tree"
    echo "$stamp" >"$IMAGE/stamp"
    flock -u 8
}

# Writes archive $1: QEMU at /usr/bin/qemu-system-x86_64 (linked into /opt/hvkvm/bin, which
# is on PATH) with its libraries and firmware. ~50 MB unpacked; zstd keeps the ISO small, and
# the kernel unpacks it (CONFIG_RD_ZSTD). It goes last on the initrd list: a compressed archive
# need not end on a 4-byte boundary.
build_qemu_image() {
    local out=$1 tree=$IMAGE/qemutree f
    rm -rf "$tree" && mkdir -p "$tree/opt/hvkvm/bin"
    copy_with_libraries "$QEMU" "$tree" "$QEMU"
    ln -s "$QEMU" "$tree/opt/hvkvm/bin/qemu-system-x86_64"
    for f in "${QEMU_FIRMWARE[@]}"; do install -D -m 644 "$(readlink -f "$f")" "$tree$f"; done
    pack_tree "$tree" "$out.cpio"
    zstd -q -9 -T0 -f --rm "$out.cpio" -o "$out" || die "zstd failed"
    rm -rf "$tree"
}

# Kernel command line of the emulated host: a serial console, no xstate dump (`noxsave`), only
# warnings on the slow console. (`pci=off` floods it with ACPI errors about PCI_Config.)
L0_CMDLINE="console=ttyS0,115200 loglevel=4 noxsave nokaslr mitigations=off tsc_early_khz=200000 hvkvm.role=l0"

# Writes ISO $2 with isolinux, the cached image and the command archive $1; with QEMU when $3
# is 1.
make_iso() {
    local cmd=$1 iso=$2 initrd=/base.img,/l1.img,/cmd.img dir
    [[ ${3:-0} == 1 ]] && initrd=$initrd,/qemu.img
    dir=$(dirname "$iso")/iso
    mkdir -p "$dir/isolinux"
    # -boot-info-table patches isolinux.bin in place: give it a copy.
    cp "$ISOLINUX_BIN" "$dir/isolinux/isolinux.bin"
    cp "$LDLINUX_C32" "$dir/isolinux/"
    ln -f "$IMAGE/vmlinuz" "$IMAGE/base.img" "$IMAGE/l1.img" "$dir/" 2>/dev/null ||
        cp "$IMAGE/vmlinuz" "$IMAGE/base.img" "$IMAGE/l1.img" "$dir/"
    if [[ ${3:-0} == 1 ]]; then
        ln -f "$IMAGE/qemu.img" "$dir/" 2>/dev/null || cp "$IMAGE/qemu.img" "$dir/"
    fi
    cp "$cmd" "$dir/cmd.img"
    cat >"$dir/isolinux/isolinux.cfg" <<EOF
DEFAULT hvkvm
PROMPT 0
LABEL hvkvm
  KERNEL /vmlinuz
  APPEND initrd=$initrd $L0_CMDLINE
EOF
    xorriso -as mkisofs -quiet -R -J -o "$iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
        -no-emul-boot -boot-load-size 4 -boot-info-table "$dir" 2>"$dir.err" ||
        die "xorriso failed: $(cat "$dir.err")"
    rm -rf "$dir" "$dir.err"
}

# Writes $1/bochsrc, $1/debugger.rc and $1/bochs.sh for RAM $2 MiB, serial log $3, Bochs log
# $4, ISO $5 and $6 processors (default 1).
write_bochsrc() {
    local run=$1
    # sync=none with a high ips: emulated time advances with instructions, not wall time, so
    # the guest's timer interrupts do not eat the (slow) emulated CPU. Bochs' "errors" are
    # guest events (unknown MSRs read every tick, EPT violations): ~80,000 lines per session.
    cat >"$run/bochsrc" <<EOF
cpu: model=corei7_skylake_x, count=${6:-1}, ips=200000000, reset_on_triple_fault=1
memory: guest=$2, host=$2
clock: sync=none, time0=local
romimage: file=$BOCHS_BIOS
vgaromimage: file=$VGA_BIOS
ata0-master: type=cdrom, path=$5, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$3
display_library: term
mouse: enabled=0
log: $4
panic: action=fatal
error: action=ignore
info: action=ignore
debug: action=ignore
EOF
    # Debian's Bochs has the internal debugger, which stops before the first instruction.
    echo c >"$run/debugger.rc"
    cat >"$run/bochs.sh" <<EOF
#!/bin/sh
echo \$\$ >"$run/bochs.pid"
exec bochs -q -f "$run/bochsrc" -rc "$run/debugger.rc"
EOF
    chmod 755 "$run/bochs.sh"
}
