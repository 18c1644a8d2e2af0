//! The KVM interfaces of the kernel Hyper-V backend that kvm-ioctls does not wrap:
//! `KVM_GET_SUPPORTED_HV_CPUID`, the `kvm_run.hyperv` payload of `KVM_EXIT_HYPERV` (kvm-ioctls'
//! `VcpuExit::Hyperv` carries none), and the per-vCPU capabilities that take arguments.

use kvm_bindings::{
    kvm_enable_cap, CpuId, KVMIO, KVM_CAP_HYPERV_ENFORCE_CPUID, KVM_CAP_HYPERV_SYNIC2,
    KVM_EXIT_HYPERV, KVM_EXIT_HYPERV_HCALL, KVM_EXIT_HYPERV_SYNDBG, KVM_EXIT_HYPERV_SYNIC,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
use vmm_sys_util::ioctl_iowr_nr;

// _IOWR(KVMIO, 0xc1, struct kvm_cpuid2): the same on /dev/kvm (KVM_CAP_SYS_HYPERV_CPUID) and on
// a vCPU fd (KVM_CAP_HYPERV_CPUID).
ioctl_iowr_nr!(
    KVM_GET_SUPPORTED_HV_CPUID,
    KVMIO,
    0xc1,
    kvm_bindings::kvm_cpuid2
);

/// The Hyper-V CPUID leaves this KVM can emulate (the system ioctl; KVM returns 10 or so
/// leaves, 0x40000000..=0x40000082). Errors when the kernel has no in-kernel Hyper-V.
pub fn supported_hv_cpuid(kvm: &Kvm) -> Result<CpuId, errno::Error> {
    const MAX_ENTRIES: usize = 64;
    let mut cpuid = CpuId::new(MAX_ENTRIES).map_err(|_| errno::Error::new(libc::ENOMEM))?;
    // SAFETY: the ioctl writes at most `nent` entries (set to the allocation's size by
    // CpuId::new) into the FAM struct we own and pass by pointer, and updates `nent`; the
    // return value is checked.
    let ret = unsafe {
        ioctl_with_mut_ptr(
            kvm,
            KVM_GET_SUPPORTED_HV_CPUID(),
            cpuid.as_mut_fam_struct_ptr(),
        )
    };
    if ret < 0 {
        return Err(errno::Error::last());
    }
    Ok(cpuid)
}

/// Enables a capability that takes no argument beyond the cap number on a vCPU.
fn enable_vcpu_cap(vcpu: &VcpuFd, cap: u32, arg0: u64) -> Result<(), errno::Error> {
    let cap = kvm_enable_cap {
        cap,
        args: [arg0, 0, 0, 0],
        ..Default::default()
    };
    vcpu.enable_cap(&cap)
}

/// KVM_CAP_HYPERV_SYNIC2: KVM emulates this vCPU's SynIC (without zeroing the SIMP/SIEFP pages
/// on enable, unlike version 1).
pub fn enable_synic2(vcpu: &VcpuFd) -> Result<(), errno::Error> {
    enable_vcpu_cap(vcpu, KVM_CAP_HYPERV_SYNIC2, 0)
}

/// KVM_CAP_HYPERV_ENFORCE_CPUID: KVM refuses synthetic MSRs and hypercalls whose CPUID bit the
/// guest was not given (the hyperv_features.c matrix).
pub fn enable_enforce_cpuid(vcpu: &VcpuFd) -> Result<(), errno::Error> {
    enable_vcpu_cap(vcpu, KVM_CAP_HYPERV_ENFORCE_CPUID, 1)
}

/// The payload of a `KVM_EXIT_HYPERV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypervExit {
    /// The guest wrote SCONTROL, SIEFP, SIMP or EOM; KVM reports the SynIC's new state.
    Synic {
        /// Which MSR.
        msr: u32,
        /// SCONTROL.
        control: u64,
        /// SIEFP.
        evt_page: u64,
        /// SIMP.
        msg_page: u64,
    },
    /// A hypercall KVM leaves to user space (PostMessage, SignalEvent without an eventfd,
    /// extended and debug calls). User space sets the result with [`set_hcall_result`].
    Hcall {
        /// The control word.
        input: u64,
        /// Input GPA / first fast word, output GPA / second fast word.
        params: [u64; 2],
    },
    /// The guest wrote a synthetic debugger MSR.
    Syndbg {
        /// Which MSR.
        msr: u32,
    },
    /// A type this hvkvm does not know.
    Unknown {
        /// `kvm_hyperv_exit.type`.
        kind: u32,
    },
}

/// Reads the payload of the `KVM_EXIT_HYPERV` that `vcpu.run()` just returned.
pub fn hyperv_exit(vcpu: &mut VcpuFd) -> HypervExit {
    let run = vcpu.get_kvm_run();
    debug_assert_eq!(run.exit_reason, KVM_EXIT_HYPERV);
    // SAFETY: exit_reason is KVM_EXIT_HYPERV (the caller just got that exit), so KVM filled the
    // `hyperv` member of the union; it is plain old data in the mmapped kvm_run page, which
    // stays mapped while we hold `vcpu`.
    let exit = unsafe { run.__bindgen_anon_1.hyperv };
    match exit.type_ {
        KVM_EXIT_HYPERV_SYNIC => {
            // SAFETY: type SYNIC means KVM wrote the `synic` member; plain old data.
            let s = unsafe { exit.u.synic };
            HypervExit::Synic {
                msr: s.msr,
                control: s.control,
                evt_page: s.evt_page,
                msg_page: s.msg_page,
            }
        }
        KVM_EXIT_HYPERV_HCALL => {
            // SAFETY: type HCALL means KVM wrote the `hcall` member; plain old data.
            let h = unsafe { exit.u.hcall };
            HypervExit::Hcall {
                input: h.input,
                params: h.params,
            }
        }
        KVM_EXIT_HYPERV_SYNDBG => {
            // SAFETY: type SYNDBG means KVM wrote the `syndbg` member; plain old data.
            let d = unsafe { exit.u.syndbg };
            HypervExit::Syndbg { msr: d.msr }
        }
        kind => HypervExit::Unknown { kind },
    }
}

/// Sets the result of the hypercall of the `KVM_EXIT_HYPERV`/HCALL just taken; KVM puts it in
/// the guest's RAX on the next KVM_RUN.
pub fn set_hcall_result(vcpu: &mut VcpuFd, result: u64) {
    let run = vcpu.get_kvm_run();
    if run.exit_reason != KVM_EXIT_HYPERV {
        return;
    }
    // SAFETY: the exit is KVM_EXIT_HYPERV, so the `hyperv` member is the live one; writing a
    // plain integer field of the mmapped kvm_run page is what the KVM API asks of user space.
    unsafe {
        if run.__bindgen_anon_1.hyperv.type_ == KVM_EXIT_HYPERV_HCALL {
            run.__bindgen_anon_1.hyperv.u.hcall.result = result;
        }
    }
}
