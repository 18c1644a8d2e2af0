#!/bin/sh
# /init of the emulated Intel host (L0, `hvkvm.role=l0`) and of the L1 guests that hvkvm-l1
# boots inside it (`hvkvm.role=l1`): load KVM with nested VMX, run /hvkvm/command, report its
# exit status on the console as the last thing, power off.
export PATH=/opt/hvkvm/bin:/bin
export HVKVM_GUEST_DIR=/opt/hvkvm/guest
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
role=L0
case " $(cat /proc/cmdline) " in *" hvkvm.role=l1 "*) role=L1 ;; esac
echo "HVKVM-$role: /init started"

mods=/lib/modules/$(uname -r)/kernel
if ! { insmod "$mods/virt/lib/irqbypass.ko" && insmod "$mods/arch/x86/kvm/kvm.ko" &&
    insmod "$mods/arch/x86/kvm/kvm-intel.ko" nested=1; }; then
    echo "HVKVM-$role: loading kvm-intel failed (is VMX visible? grep -c vmx /proc/cpuinfo:" \
        "$(grep -c vmx /proc/cpuinfo))"
fi

echo "HVKVM-$role: kvm loaded, running /hvkvm/command"
cd /tmp || true
if [ -x /hvkvm/command ]; then
    /hvkvm/command
    status=$?
else
    echo "HVKVM-$role: no /hvkvm/command in the initramfs"
    status=125
fi
# The report goes out last and the console gets a moment to drain: output written just before
# poweroff can be lost.
sleep 1
echo "HVKVM-$role-EXIT: $status"
sleep 1
poweroff -f
