//! A vCPU's whole architectural state as KVM exposes it, read on the vCPU's own thread and
//! written back in the order KVM requires.
//!
//! Restore order (docs/snapshot.md explains each step; KVM's api.rst and the KVM commits
//! cited there are the sources):
//!
//! 1. `KVM_SET_CPUID2` and the per-vCPU capabilities (done when the vCPU is created: KVM
//!    checks MSR writes, XSAVE features and the Hyper-V MSRs against CPUID);
//! 2. `KVM_SET_TSC_KHZ` when the guest keeps its TSC rate through TSC scaling (before any
//!    TSC value is written);
//! 3. `KVM_SET_SREGS` (CR0/CR4/EFER and the APIC base, which the MSRs and the LAPIC depend on);
//! 4. `KVM_SET_MSRS`, every MSR but `IA32_TSC_DEADLINE` (VP_ASSIST_PAGE among them, before the
//!    nested state that refers to it; `IA32_TSC` written once per vCPU with one value for the
//!    whole VM, so KVM matches the writes and keeps one offset and its master clock);
//! 5. `KVM_SET_XCRS`, then `KVM_SET_XSAVE` (XCR0 first, as KVM's selftests do);
//! 6. `KVM_SET_LAPIC` (after the APIC base: api.rst, KVM_GET_LAPIC);
//! 7. `IA32_TSC_DEADLINE` (only meaningful once the LAPIC timer is in TSC-deadline mode);
//! 8. `KVM_SET_DEBUGREGS`, `KVM_SET_REGS`, `KVM_SET_MP_STATE`;
//! 9. `KVM_SET_VCPU_EVENTS` (pending exceptions, NMI, SMM: must precede the nested state,
//!    which refuses guest mode while SMM is active);
//! 10. `KVM_SET_NESTED_STATE` last.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, Xsave, KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vmm_sys_util::fam::FamStruct;
use zerocopy::{FromBytes, IntoBytes};

use super::nested::{self, NestedState};

/// `IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_TSC_DEADLINE`: written after the LAPIC.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// Size of the classic `kvm_xsave` region.
const XSAVE_CLASSIC_SIZE: usize = std::mem::size_of::<kvm_xsave>();

/// A vCPU state ioctl failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// An ioctl failed.
    #[error("{what} failed on vCPU {vcpu}")]
    Ioctl {
        /// The vCPU.
        vcpu: u32,
        /// Which ioctl.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM did not accept an MSR the saved state has.
    #[error(
        "KVM_SET_MSRS refused MSR {index:#x} = {value:#x} on vCPU {vcpu}: this host's KVM does \
         not support it for this vCPU (a different kernel or CPU than the one that saved it)"
    )]
    MsrRefused {
        /// The vCPU.
        vcpu: u32,
        /// The MSR.
        index: u32,
        /// The value.
        value: u64,
    },
    /// The saved XSAVE area does not have the size this host's KVM uses.
    #[error(
        "the saved XSAVE area of vCPU {vcpu} has {saved} bytes, this host's KVM uses {host}: \
         restore on a host with the same XSAVE features"
    )]
    XsaveSize {
        /// The vCPU.
        vcpu: u32,
        /// Bytes saved.
        saved: usize,
        /// Bytes this host uses.
        host: usize,
    },
    /// The saved state has nested state but this host cannot restore it.
    #[error(
        "vCPU {vcpu} has nested (VMX) state but this host lacks KVM_CAP_NESTED_STATE: restore \
         on a host with nested virtualization"
    )]
    NoNestedState {
        /// The vCPU.
        vcpu: u32,
    },
}

/// Which optional state this host's KVM has, probed once per VM.
#[derive(Debug, Clone, Default)]
pub struct StateCaps {
    /// Bytes of the XSAVE area (`KVM_CAP_XSAVE2`, at least 4096); 0 without `KVM_CAP_XSAVE`.
    pub xsave_size: usize,
    /// `KVM_CAP_XCRS`.
    pub xcrs: bool,
    /// `KVM_CAP_NESTED_STATE`.
    pub nested_state: bool,
    /// `KVM_CAP_TSC_CONTROL`.
    pub tsc_control: bool,
    /// The MSRs saved for every vCPU, in the order they are saved.
    pub msrs: Vec<u32>,
}

impl StateCaps {
    /// Probes `kvm`/`vm`; `extra_msrs` are added to KVM's list (the kernel Hyper-V backend's
    /// synthetic MSRs), `skip_msrs` are left out (the range the user backend owns).
    pub fn probe(
        kvm: &Kvm,
        vm: &VmFd,
        extra_msrs: &[u32],
        skip_msrs: Option<std::ops::RangeInclusive<u32>>,
    ) -> Result<Self, kvm_ioctls::Error> {
        let xsave_size = if vm.check_extension(Cap::Xsave) {
            let xsave2 = vm.check_extension_int(Cap::Xsave2);
            (xsave2.max(0) as usize).max(XSAVE_CLASSIC_SIZE)
        } else {
            0
        };
        let mut msrs: Vec<u32> = kvm.get_msr_index_list()?.as_slice().to_vec();
        for &m in extra_msrs {
            if !msrs.contains(&m) {
                msrs.push(m);
            }
        }
        if let Some(skip) = skip_msrs {
            msrs.retain(|m| !skip.contains(m));
        }
        Ok(StateCaps {
            xsave_size,
            xcrs: vm.check_extension(Cap::Xcrs),
            nested_state: vm.check_extension_int(Cap::NestedState) > 0,
            tsc_control: vm.check_extension(Cap::TscControl),
            msrs,
        })
    }
}

/// Everything KVM holds about one vCPU.
#[derive(Clone)]
pub struct VcpuArchState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers, APIC base, pending interrupt bitmap.
    pub sregs: kvm_sregs,
    /// The XSAVE area (x87, SSE, AVX, …) as KVM_GET_XSAVE(2) returns it.
    pub xsave: Vec<u8>,
    /// XCR0 and friends, where the host has them.
    pub xcrs: Option<kvm_xcrs>,
    /// DR0-3, DR6, DR7.
    pub debugregs: kvm_debugregs,
    /// Pending exceptions, interrupts, NMI and SMM state.
    pub events: kvm_vcpu_events,
    /// `KVM_MP_STATE_*`.
    pub mp_state: u32,
    /// The in-kernel LAPIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR of [`StateCaps::msrs`] KVM could read for this vCPU.
    pub msrs: Vec<(u32, u64)>,
    /// The vCPU's TSC rate in kHz.
    pub tsc_khz: Option<u32>,
    /// Nested (VMX/SVM) state, when the vCPU has any.
    pub nested: Option<NestedState>,
}

impl std::fmt::Debug for VcpuArchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuArchState")
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .field("nested", &self.nested)
            .finish_non_exhaustive()
    }
}

impl VcpuArchState {
    /// The saved value of MSR `index`.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|(i, _)| *i == index).map(|(_, v)| *v)
    }
}

fn ioctl(vcpu: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Ioctl { vcpu, what, source }
}

/// Finishes the I/O or MMIO instruction of the vCPU's last exit: KVM completes it (and moves
/// RIP past it) only at the next KVM_RUN, and that pending part is not in any state user space
/// can read (api.rst, KVM_RUN). KVM_RUN with `immediate_exit` set completes it without running
/// any guest instruction. Without this a restored vCPU would execute its last `out` again.
pub fn complete_pending_io(fd: &mut VcpuFd) -> Result<(), kvm_ioctls::Error> {
    fd.set_kvm_immediate_exit(1);
    let result = fd.run().map(|_| ());
    fd.set_kvm_immediate_exit(0);
    match result {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        other => other,
    }
}

/// Reads vCPU `index`'s state. Call it on the vCPU's thread while the vCPU is out of KVM_RUN
/// and the whole VM is paused (pending events are only stable then).
pub fn capture(fd: &VcpuFd, index: u32, caps: &StateCaps) -> Result<VcpuArchState, VcpuStateError> {
    let e = |what| ioctl(index, what);
    // Events first: the other GET ioctls must not be able to change what is pending.
    let events = fd.get_vcpu_events().map_err(e("KVM_GET_VCPU_EVENTS"))?;
    let mp_state = fd.get_mp_state().map_err(e("KVM_GET_MP_STATE"))?.mp_state;
    let regs = fd.get_regs().map_err(e("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(e("KVM_GET_SREGS"))?;
    let xsave = get_xsave(fd, caps).map_err(e("KVM_GET_XSAVE"))?;
    let xcrs = if caps.xcrs {
        Some(fd.get_xcrs().map_err(e("KVM_GET_XCRS"))?)
    } else {
        None
    };
    let debugregs = fd.get_debug_regs().map_err(e("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(e("KVM_GET_LAPIC"))?;
    let msrs = get_msrs(fd, &caps.msrs).map_err(e("KVM_GET_MSRS"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let nested = if caps.nested_state {
        nested::get_nested_state(fd).map_err(e("KVM_GET_NESTED_STATE"))?
    } else {
        None
    };
    Ok(VcpuArchState {
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        events,
        mp_state,
        lapic,
        msrs,
        tsc_khz,
        nested,
    })
}

/// Writes `state` into a freshly created vCPU (CPUID already set), in KVM's order (module
/// doc). `tsc` replaces the saved `IA32_TSC` (one value for every vCPU of the VM); `tsc_khz`
/// sets the vCPU's TSC rate first (TSC scaling).
pub fn restore(
    fd: &VcpuFd,
    index: u32,
    state: &VcpuArchState,
    caps: &StateCaps,
    tsc: Option<u64>,
    tsc_khz: Option<u32>,
) -> Result<(), VcpuStateError> {
    let e = |what| ioctl(index, what);
    if let Some(khz) = tsc_khz {
        fd.set_tsc_khz(khz).map_err(e("KVM_SET_TSC_KHZ"))?;
    }
    fd.set_sregs(&state.sregs).map_err(e("KVM_SET_SREGS"))?;
    type MsrList = Vec<(u32, u64)>;
    let (early, late): (MsrList, MsrList) = state
        .msrs
        .iter()
        .map(|&(i, v)| match (i, tsc) {
            (MSR_IA32_TSC, Some(t)) => (i, t),
            _ => (i, v),
        })
        .partition(|(i, _)| *i != MSR_IA32_TSC_DEADLINE);
    set_msrs(fd, index, &early)?;
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(xcrs).map_err(e("KVM_SET_XCRS"))?;
    }
    set_xsave(fd, index, &state.xsave, caps)?;
    fd.set_lapic(&state.lapic).map_err(e("KVM_SET_LAPIC"))?;
    set_msrs(fd, index, &late)?;
    fd.set_debug_regs(&state.debugregs)
        .map_err(e("KVM_SET_DEBUGREGS"))?;
    fd.set_regs(&state.regs).map_err(e("KVM_SET_REGS"))?;
    fd.set_mp_state(kvm_mp_state {
        mp_state: state.mp_state,
    })
    .map_err(e("KVM_SET_MP_STATE"))?;
    fd.set_vcpu_events(&state.events)
        .map_err(e("KVM_SET_VCPU_EVENTS"))?;
    if let Some(n) = &state.nested {
        if !caps.nested_state {
            return Err(VcpuStateError::NoNestedState { vcpu: index });
        }
        nested::set_nested_state(fd, n).map_err(e("KVM_SET_NESTED_STATE"))?;
    }
    Ok(())
}

/// KVM_GET_MSRS of `indices`, in batches; an MSR KVM does not have for this vCPU (KVM stops a
/// batch there) is left out.
fn get_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, kvm_ioctls::Error> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
        let n = fd.get_msrs(&mut msrs)?;
        out.extend(msrs.as_slice()[..n].iter().map(|m| (m.index, m.data)));
        // Entry n (if any) is one KVM refused: skip it and go on after it.
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

fn set_msrs(fd: &VcpuFd, vcpu: u32, msrs: &[(u32, u64)]) -> Result<(), VcpuStateError> {
    for chunk in msrs.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::Ioctl {
            vcpu,
            what: "KVM_SET_MSRS",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let n = fd.set_msrs(&list).map_err(ioctl(vcpu, "KVM_SET_MSRS"))?;
        if n < chunk.len() {
            let (index, value) = chunk[n];
            return Err(VcpuStateError::MsrRefused { vcpu, index, value });
        }
    }
    Ok(())
}

fn get_xsave(fd: &VcpuFd, caps: &StateCaps) -> Result<Vec<u8>, kvm_ioctls::Error> {
    match caps.xsave_size {
        0 => Ok(Vec::new()),
        XSAVE_CLASSIC_SIZE => Ok(fd.get_xsave()?.as_bytes().to_vec()),
        size => {
            let mut xsave = xsave2_buffer(size)?;
            // SAFETY: `xsave` was allocated for `size` bytes, the size KVM_CHECK_EXTENSION(
            // KVM_CAP_XSAVE2) reported for this VM; hvkvm never enables dynamic XSTATE
            // features (arch_prctl), so the size cannot grow after that check.
            unsafe { fd.get_xsave2(&mut xsave)? };
            Ok(xsave_bytes(&xsave, size))
        }
    }
}

fn set_xsave(fd: &VcpuFd, vcpu: u32, bytes: &[u8], caps: &StateCaps) -> Result<(), VcpuStateError> {
    if bytes.len() != caps.xsave_size {
        return Err(VcpuStateError::XsaveSize {
            vcpu,
            saved: bytes.len(),
            host: caps.xsave_size,
        });
    }
    let e = ioctl(vcpu, "KVM_SET_XSAVE");
    match caps.xsave_size {
        0 => Ok(()),
        XSAVE_CLASSIC_SIZE => {
            let xsave =
                kvm_xsave::read_from_bytes(bytes).map_err(|_| VcpuStateError::XsaveSize {
                    vcpu,
                    saved: bytes.len(),
                    host: XSAVE_CLASSIC_SIZE,
                })?;
            // SAFETY: the host's XSAVE size is the classic 4096 bytes (KVM_CAP_XSAVE2 said no
            // more), which is exactly the `kvm_xsave` KVM reads here.
            unsafe { fd.set_xsave(&xsave) }.map_err(e)
        }
        size => {
            let mut xsave = xsave2_buffer(size).map_err(ioctl(vcpu, "KVM_SET_XSAVE"))?;
            fill_xsave(&mut xsave, bytes);
            // SAFETY: `xsave` holds `size` bytes, the size KVM_CAP_XSAVE2 reported, which is
            // what KVM reads; no dynamic XSTATE feature is ever enabled by hvkvm.
            unsafe { fd.set_xsave2(&xsave) }.map_err(e)
        }
    }
}

/// An `Xsave` FAM buffer of `size` bytes in all.
fn xsave2_buffer(size: usize) -> Result<Xsave, kvm_ioctls::Error> {
    let entry = std::mem::size_of::<<kvm_bindings::kvm_xsave2 as FamStruct>::Entry>();
    let extra = (size - XSAVE_CLASSIC_SIZE).div_ceil(entry);
    Xsave::new(extra).map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))
}

fn xsave_bytes(xsave: &Xsave, size: usize) -> Vec<u8> {
    let mut out = xsave.as_fam_struct_ref().xsave.as_bytes().to_vec();
    for word in xsave.as_slice() {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(size);
    out
}

fn fill_xsave(xsave: &mut Xsave, bytes: &[u8]) {
    let (head, tail) = bytes.split_at(XSAVE_CLASSIC_SIZE.min(bytes.len()));
    if let Ok(classic) = kvm_xsave::read_from_bytes(head) {
        // SAFETY: only the fixed `xsave` header is replaced; the length field the wrapper
        // relies on is untouched.
        unsafe { xsave.as_mut_fam_struct() }.xsave = classic;
    }
    for (word, chunk) in xsave.as_mut_slice().iter_mut().zip(tail.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_le_bytes(b);
    }
}
