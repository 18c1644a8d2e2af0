//! Nested virtualization through KVM: the enlightened-VMCS capability, whose argument is a
//! pointer the kernel writes through (so it is wrapped here with the `u16` it writes owned by
//! the wrapper, never exposed as a safe function taking a raw pointer), and the nested state
//! of a vCPU (`KVM_GET/SET_NESTED_STATE`) in kvm-bindings' correctly sized buffer.

use evmcs_layout::version::{EvmcsVersionRange, EVMCS_VERSION};
use kvm_bindings::{kvm_enable_cap, KVMIO, KVM_CAP_HYPERV_ENLIGHTENED_VMCS};
use kvm_ioctls::KvmNestedStateBuffer;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

// _IOW(KVMIO, 0xa3, struct kvm_enable_cap), the vCPU form.
ioctl_iow_nr!(KVM_ENABLE_CAP, KVMIO, 0xa3, kvm_bindings::kvm_enable_cap);

/// `KVM_STATE_NESTED_EVMCS`: the nested state's flag for "L1 runs L2 through an eVMCS".
pub const KVM_STATE_NESTED_EVMCS: u16 = 0x0004;
/// `KVM_STATE_NESTED_GUEST_MODE`: the vCPU is in L2.
pub const KVM_STATE_NESTED_GUEST_MODE: u16 = 0x0001;

/// Why the enlightened VMCS could not be enabled.
#[derive(Debug, thiserror::Error)]
pub enum EvmcsError {
    /// The ioctl failed (no in-kernel Hyper-V, not an Intel VMX host, …).
    #[error("KVM_ENABLE_CAP(KVM_CAP_HYPERV_ENLIGHTENED_VMCS) failed")]
    Enable(#[source] errno::Error),
    /// KVM answered a version range of 0: nested VMX is off (kvm_intel nested=0).
    #[error(
        "KVM reports no eVMCS version (range 0): nested VMX is off on this host; load \
         kvm_intel with nested=1"
    )]
    NestedOff,
    /// KVM's range does not include the version hvkvm's evmcs-layout describes.
    #[error("KVM supports eVMCS versions {min}..={max}, which excludes version {EVMCS_VERSION} (evmcs-layout)")]
    Unsupported {
        /// KVM's minimum.
        min: u8,
        /// KVM's maximum.
        max: u8,
    },
}

/// Enables the enlightened VMCS on `vcpu` and returns the version range KVM supports, checked
/// against the version evmcs-layout describes. Pinned to version 1 for the guest (as QEMU does,
/// so the guest stays migratable when a kernel grows version 2).
pub fn enable_evmcs(vcpu: &VcpuFd) -> Result<EvmcsVersionRange, EvmcsError> {
    let mut raw: u16 = 0;
    let cap = kvm_enable_cap {
        cap: KVM_CAP_HYPERV_ENLIGHTENED_VMCS,
        // KVM writes the supported range (low byte min, high byte max) through args[0].
        args: [std::ptr::addr_of_mut!(raw) as u64, 0, 0, 0],
        ..Default::default()
    };
    // SAFETY: `vcpu` is a vCPU fd and `cap` a valid kvm_enable_cap; for this capability KVM
    // writes one u16 through args[0], which points at `raw`, owned by this frame and alive for
    // the whole call. The return value is checked.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_ENABLE_CAP(), &cap) };
    if ret < 0 {
        return Err(EvmcsError::Enable(errno::Error::last()));
    }
    // SAFETY: `raw` is a plain u16 the kernel may have written during the ioctl; reading it
    // through a volatile load keeps the compiler from assuming it is still 0.
    let raw = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(raw)) };
    if raw == 0 {
        return Err(EvmcsError::NestedOff);
    }
    let range = EvmcsVersionRange::from_raw(raw).ok_or(EvmcsError::NestedOff)?;
    if !range.contains(EVMCS_VERSION) {
        return Err(EvmcsError::Unsupported {
            min: range.min(),
            max: range.max(),
        });
    }
    Ok(EvmcsVersionRange::V1)
}

/// A vCPU's nested state, as KVM_GET_NESTED_STATE returned it.
#[derive(Clone)]
pub struct NestedState {
    buffer: Box<KvmNestedStateBuffer>,
}

impl std::fmt::Debug for NestedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NestedState")
            .field("flags", &self.flags())
            .field("format", &self.buffer.format)
            .field("size", &self.buffer.size)
            .finish()
    }
}

impl NestedState {
    /// `KVM_STATE_NESTED_*` flags.
    pub fn flags(&self) -> u16 {
        self.buffer.flags
    }

    /// Whether L1 runs L2 through an enlightened VMCS.
    pub fn evmcs(&self) -> bool {
        self.flags() & KVM_STATE_NESTED_EVMCS != 0
    }

    /// Whether the vCPU was in L2 when the state was taken.
    pub fn guest_mode(&self) -> bool {
        self.flags() & KVM_STATE_NESTED_GUEST_MODE != 0
    }

    /// The state's size as KVM reported it (header plus VMCS12 and shadow VMCS12).
    pub fn size(&self) -> u32 {
        self.buffer.size
    }

    /// The whole buffer as bytes (for a snapshot file).
    pub fn to_bytes(&self) -> Vec<u8> {
        zerocopy::IntoBytes::as_bytes(&*self.buffer).to_vec()
    }

    /// A buffer from [`NestedState::to_bytes`]; `None` unless `bytes` has exactly the
    /// buffer's size and the header's size fits in it.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let buffer = <KvmNestedStateBuffer as zerocopy::FromBytes>::read_from_bytes(bytes).ok()?;
        (buffer.size as usize <= bytes.len()).then(|| NestedState {
            buffer: Box::new(buffer),
        })
    }
}

/// KVM_GET_NESTED_STATE; `None` when the vCPU has no nested state (VMX never turned on).
pub fn get_nested_state(vcpu: &VcpuFd) -> Result<Option<NestedState>, errno::Error> {
    let mut buffer = Box::new(KvmNestedStateBuffer::empty());
    Ok(vcpu
        .nested_state(&mut buffer)?
        .map(|_| NestedState { buffer }))
}

/// KVM_SET_NESTED_STATE. KVM requires the vCPU's MSRs (VP_ASSIST_PAGE among them, for an
/// eVMCS) and special registers to be set first.
pub fn set_nested_state(vcpu: &VcpuFd, state: &NestedState) -> Result<(), errno::Error> {
    vcpu.set_nested_state(&state.buffer)
}
