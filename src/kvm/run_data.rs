//! Typed copies of `kvm_run` payloads that kvm-ioctls' `VcpuExit` does not carry.

use kvm_bindings::{
    KVM_EXIT_INTERNAL_ERROR, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};
use kvm_ioctls::VcpuFd;

/// `KVM_EXIT_INTERNAL_ERROR`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InternalError {
    /// KVM's instruction emulator could not execute the instruction at RIP.
    Emulation {
        /// The instruction bytes KVM fetched (empty when KVM did not report them).
        insn: Vec<u8>,
    },
    /// Any other suberror, with the raw data words KVM reported.
    Other {
        /// `kvm_run.internal.suberror`.
        suberror: u32,
        /// `kvm_run.internal.data[..ndata]`.
        data: Vec<u64>,
    },
}

/// Reads the payload of the `KVM_EXIT_INTERNAL_ERROR` that `vcpu.run()` just returned.
///
/// Must only be called right after `run()` returned `VcpuExit::InternalError`.
pub fn internal_error(vcpu: &mut VcpuFd) -> InternalError {
    let run = vcpu.get_kvm_run();
    debug_assert_eq!(run.exit_reason, KVM_EXIT_INTERNAL_ERROR);
    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR (the caller just got that exit), so KVM
    // filled the `internal` member of the union; the union is plain old data in the mmapped
    // kvm_run page, which stays mapped while we hold `vcpu`.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
        // SAFETY: for suberror EMULATION KVM writes the `emulation_failure` layout, which
        // overlays `internal` (same suberror/ndata prefix); plain old data as above.
        let failure = unsafe { run.__bindgen_anon_1.emulation_failure };
        let has_bytes = failure.ndata >= 3
            && failure.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
        let insn = if has_bytes {
            // SAFETY: the anonymous union has a single member (insn_size + insn_bytes), plain
            // old data; KVM set the INSTRUCTION_BYTES flag, so it is initialised.
            let bytes = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
            let len = usize::from(bytes.insn_size).min(bytes.insn_bytes.len());
            bytes.insn_bytes[..len].to_vec()
        } else {
            Vec::new()
        };
        return InternalError::Emulation { insn };
    }
    let ndata = (internal.ndata as usize).min(internal.data.len());
    InternalError::Other {
        suberror: internal.suberror,
        data: internal.data[..ndata].to_vec(),
    }
}
