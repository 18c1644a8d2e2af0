//! The `evmcs-layout` crate compiled into a freestanding guest (no SSE) and used at CPL0:
//! the guest writes eVMCS fields by VMCS encoding and reports what it reads back.

use evmcs_layout::fields;
use evmcs_layout::vmcs::{GUEST_CS_SELECTOR, GUEST_RIP};

use super::{suite_cases, Case};
use crate::GuestTest;

/// The eVMCS-layout cases.
pub fn cases() -> Vec<Case> {
    suite_cases!("evmcs"; guest_writes_evmcs_fields_at_the_tlfs_offsets)
}

fn guest_writes_evmcs_fields_at_the_tlfs_offsets() {
    let run = GuestTest::new("evmcs_smoke").run();
    run.expect_done();
    let [rip, rip_offset, rip_raw, cs, cs_offset, cs_raw] = run.sync(1).values;
    assert_eq!(rip, 0xFFFF_8000_1234_5678);
    assert_eq!(rip_raw, rip, "the guest's raw bytes match the accessor");
    // GUEST_RIP lives at 0x330 in the eVMCS (TLFS hv_vmx_enlightened_vmcs).
    assert_eq!(rip_offset, 0x330);
    assert_eq!((cs, cs_raw), (0x10, 0x10));
    // The guest build and the host build of the crate agree on the layout.
    assert_eq!(
        cs_offset,
        u64::from(fields::lookup(GUEST_CS_SELECTOR).unwrap().offset)
    );
    assert_eq!(
        rip_offset,
        u64::from(fields::lookup(GUEST_RIP).unwrap().offset)
    );
}
