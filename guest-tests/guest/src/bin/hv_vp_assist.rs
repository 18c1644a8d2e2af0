//! Enables this VP's assist page and announces an enlightened VMCS through it, the way an L1
//! hypervisor on Hyper-V does before an enlightened VM entry; hvkvm decodes both pages.
//!
//! The host must offer 03.EAX[4] (APIC MSRs and VP assist page).
//! Reports: SYNC 1 = (VP_ASSIST_PAGE write faulted 0/1, vector or u64::MAX, assist page GPA,
//! eVMCS GPA). DONE.
#![no_std]
#![no_main]

use evmcs_layout::{access, vmcs, vp_assist, Page};
use hvkvm_guest::hyperv::VP_ASSIST_PAGE;
use hvkvm_guest::{guest_assert, guest_done, guest_sync, idt, BootInfo, SpinLock};

hvkvm_guest::entry!(main);

/// Values the host test looks for in the decoded eVMCS.
const GUEST_RIP: u64 = 0xffff_ffff_8100_0000;
const GUEST_RSP: u64 = 0x7000;
const EPT_POINTER: u64 = 0x1234_5000 | 0x5e;

static ASSIST: SpinLock<Page> = SpinLock::new(Page::ZERO);
static EVMCS: SpinLock<Page> = SpinLock::new(Page::ZERO);

fn main(_boot: BootInfo) -> ! {
    idt::install();
    let mut evmcs = EVMCS.lock();
    let mut assist = ASSIST.lock();
    let evmcs_gpa = &*evmcs as *const Page as u64;
    let assist_gpa = &*assist as *const Page as u64;
    let ok = access::initialize(&mut *evmcs).is_ok()
        && access::write_field_and_dirty(&mut *evmcs, vmcs::GUEST_RIP, GUEST_RIP).is_ok()
        && access::write_field_and_dirty(&mut *evmcs, vmcs::GUEST_RSP, GUEST_RSP).is_ok()
        && access::write_field_and_dirty(&mut *evmcs, vmcs::EPT_POINTER, EPT_POINTER).is_ok()
        && vp_assist::set_current_evmcs(&mut *assist, Some(evmcs_gpa)).is_ok();
    guest_assert!(ok, "building the eVMCS or the assist page failed");
    // SAFETY: enabling the assist page only makes the VMM read this page; the write is caught
    // if the MSR does not exist.
    let result = unsafe { idt::wrmsr_safe(VP_ASSIST_PAGE, assist_gpa | 1) };
    let (faulted, vector) = match result {
        Ok(()) => (0, u64::MAX),
        Err(v) => (1, u64::from(v)),
    };
    guest_sync!(1, faulted, vector, assist_gpa, evmcs_gpa);
    guest_done!()
}
