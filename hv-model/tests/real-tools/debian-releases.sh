#!/usr/bin/env bash
# Brings other Debian releases of QEMU and libvirt's schemas next to the installed ones, for
# the version data in hv-model (flags.rs qemu_since, formats/libvirt.rs element releases):
#   QEMU 5.2 (Debian 11) and 10.0 (Debian 12 backports): unpacked, with wrappers in
#     $OUT/bin/qemu-system-x86_64-<version>; tests/real_tools.rs checks every profile's export
#     for each of them too when HVKVM_EXTRA_QEMU_DIR=$OUT/bin.
#   libvirt schemas 7.0.0 (Debian 11), 11.3.0 (Debian 12 backports), 12.9.0 (Debian 13
#     backports) in $OUT/libvirt-<version>/.
# and prints which hv-/kvm- -cpu properties and <hyperv>/<kvm> elements each release has.
# Uses apt-get download with a private package list; nothing is installed.
# usage: debian-releases.sh [OUT]   (default: target/real-tools/debian)
set -euo pipefail
out=$(realpath -m "${1:-$(dirname "$0")/../../../target/real-tools/debian}")
mkdir -p "$out"/{apt/lists/partial,apt/cache/archives/partial,debs,bin}
cat > "$out/apt/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main
LIST
apt=(-o "Dir::Etc::SourceList=$out/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$out/apt/lists" -o "Dir::Cache=$out/apt/cache")
apt-get "${apt[@]}" update -q >/dev/null
get() { # package release-suffix-pattern
    local v
    v=$(apt-cache "${apt[@]}" madison "$1" | awk -F'|' -v p="$2" '$2 ~ p {gsub(/ /,"",$2); print $2; exit}')
    [ -n "$v" ] || { echo "no $1 matching $2" >&2; return 1; }
    (cd "$out/debs" && apt-get "${apt[@]}" download "$1=$v" >/dev/null 2>&1)
    ls "$out/debs/$1_"*"$(echo "$v" | sed 's/^[0-9]*://; s/~/%7e/g')"* 2>/dev/null | head -1 \
        || ls -t "$out/debs/$1_"* | head -1
}
unpack() { mkdir -p "$2"; dpkg-deb -x "$1" "$2"; }

# QEMU 5.2 needs Debian 11's Xen, virglrenderer and liburing libraries beside it.
unpack "$(get qemu-system-x86 'deb11')" "$out/qemu-5.2"
for lib in libxenmisc4.14 libxenstore3.0 libxenforeignmemory1 libxengnttab1 libxenevtchn1 \
           libxendevicemodel1 libxentoolcore1 libxencall1 libxentoollog1 libvirglrenderer1 liburing1; do
    unpack "$(get "$lib" '')" "$out/qemu-5.2"
done
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$out/qemu-5.2/usr/lib/x86_64-linux-gnu" \
    "$out/qemu-5.2/usr/bin/qemu-system-x86_64" > "$out/bin/qemu-system-x86_64-5.2"
unpack "$(get qemu-system-x86 'bpo12')" "$out/qemu-10.0"
printf '#!/bin/sh\nexec %s "$@"\n' "$out/qemu-10.0/usr/bin/qemu-system-x86_64" \
    > "$out/bin/qemu-system-x86_64-10.0"
chmod +x "$out"/bin/*

unpack "$(get libvirt0 'deb11')" "$out/libvirt-7.0"
unpack "$(get libvirt-common 'bpo12')" "$out/libvirt-11.3"
unpack "$(get libvirt-common 'bpo13')" "$out/libvirt-12.9"

echo "QEMU -cpu properties (hv-*, kvm*):"
for q in "$out"/bin/qemu-system-x86_64-* $(command -v qemu-system-x86_64 || true); do
    echo "  $("$q" --version | head -1)"
    "$q" -device max-x86_64-cpu,help | sed -n 's/^ *\(hv-[a-z-]*\|kvm[a-z-]*\)=<.*/\1/p' \
        | sort | tr '\n' ' ' | fold -s -w 100 | sed 's/^/    /'
    echo
done
echo "libvirt <hyperv> and <kvm> children:"
for rng in "$out"/libvirt-*/usr/share/libvirt/schemas/domaincommon.rng \
           /usr/share/libvirt/schemas/domaincommon.rng; do
    [ -f "$rng" ] || continue
    echo "  $rng"
    for def in hyperv kvm; do
        echo "    $def: $(awk "/define name=\"$def\"/,/\/define>/" "$rng" \
            | grep -oE '(element|attribute) name="[a-z_-]+"' | sed 's/.*name=//; s/"//g' | tr '\n' ' ')"
    done
    echo "    sub-elements named direct: $(grep -c 'element name="direct"' "$rng"), extended: $(grep -c 'element name="extended"' "$rng")"
done
