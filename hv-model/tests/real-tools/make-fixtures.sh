#!/usr/bin/env bash
# Regenerates the import fixtures that real tools write (hv-model/tests/fixtures/libvirt-*),
# so that hvkvm's import is tested on other programs' output, not only on its own:
#   libvirt-<name>.dumpxml.xml   libvirt's own rendering of a domain (virsh define + dumpxml)
#   libvirt-<name>.qemu-argv.txt the QEMU command line libvirt builds for it (domxml-to-native)
# The inputs below are hand-written domains of the kinds users have. Needs root and Debian's
# libvirt-daemon-system, libvirt-daemon-driver-qemu, libvirt-clients and qemu-system-x86
# (installed if missing). Starts a private libvirtd on its own socket and stops it by pid.
set -euo pipefail
cd "$(dirname "$0")/../fixtures"

need=()
for pair in libvirtd:libvirt-daemon-system virsh:libvirt-clients qemu-system-x86_64:qemu-system-x86; do
    command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ! -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ]; then
    need+=(libvirt-daemon-driver-qemu)
fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

work=$(mktemp -d)
mkdir -p "$work/run"
cat > "$work/libvirtd.conf" <<CONF
unix_sock_dir = "$work/run"
log_outputs = "3:file:$work/libvirtd.log"
CONF
exec 9>/tmp/hvkvm-libvirtd.lock
flock -w 300 9
libvirtd --config "$work/libvirtd.conf" &
daemon=$!
uri="qemu:///system?socket=$work/run/libvirt-sock"
defined=()
cleanup() {
    for d in "${defined[@]}"; do virsh -c "$uri" undefine "$d" >/dev/null 2>&1 || true; done
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do virsh -c "$uri" version --daemon >/dev/null 2>&1 && break; sleep 0.3; done

# One input per kind of guest.
declare -A input
input[windows-vbs]="
  <features>
    <acpi/>
    <apic/>
    <hyperv mode='custom'>
      <relaxed state='on'/>
      <vapic state='on'/>
      <spinlocks state='on' retries='8191'/>
      <vpindex state='on'/>
      <runtime state='on'/>
      <synic state='on'/>
      <stimer state='on'><direct state='on'/></stimer>
      <reset state='off'/>
      <vendor_id state='on' value='KVM Hv'/>
      <frequencies state='on'/>
      <reenlightenment state='on'/>
      <tlbflush state='on'/>
      <ipi state='on'/>
      <evmcs state='on'/>
      <avic state='on'/>
    </hyperv>
    <kvm>
      <hidden state='on'/>
    </kvm>
    <smm state='on'/>
  </features>
  <cpu mode='host-passthrough' check='none'/>
  <clock offset='localtime'>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='hpet' present='no'/>
    <timer name='hypervclock' present='yes'/>
  </clock>
  <devices>
    <panic model='hyperv'/>
  </devices>"
input[linux-kvm]="
  <features>
    <acpi/>
    <hyperv mode='custom'>
      <vpindex state='on'/>
      <synic state='on'/>
      <stimer state='on'/>
    </hyperv>
    <kvm>
      <hint-dedicated state='on'/>
      <poll-control state='on'/>
      <pv-ipi state='off'/>
    </kvm>
  </features>
  <cpu mode='host-passthrough' check='none'/>
  <clock offset='utc'>
    <timer name='hypervclock' present='yes'/>
  </clock>"
input[passthrough]="
  <features>
    <hyperv mode='passthrough'/>
  </features>
  <cpu mode='host-passthrough' check='none'/>
  <clock offset='localtime'/>"

for name in "${!input[@]}"; do
    src="$work/$name.xml"
    cat > "$src" <<XML
<domain type='kvm'>
  <name>hvkvm-fixture-$name</name>
  <memory unit='MiB'>1024</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
${input[$name]}
</domain>
XML
    virsh -c "$uri" define "$src" >/dev/null
    defined+=("hvkvm-fixture-$name")
    virsh -c "$uri" dumpxml --inactive "hvkvm-fixture-$name" > "libvirt-$name.dumpxml.xml"
    # Without the environment libvirt prefixes (this machine's PATH and state paths).
    virsh -c "$uri" domxml-to-native qemu-argv "libvirt-$name.dumpxml.xml" \
        | sed -E 's|^.* (/usr/bin/qemu-system-x86_64 )|\1|' > "libvirt-$name.qemu-argv.txt"
    echo "wrote libvirt-$name.{dumpxml.xml,qemu-argv.txt}"
done
echo "libvirt $(virsh -c "$uri" version --daemon | awk '/daemon/ {print $NF}'), \
$(qemu-system-x86_64 --version | head -1)" > libvirt-fixtures.version
