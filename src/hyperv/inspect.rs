//! Reading a VP's assist page and, when it announces one, the enlightened VMCS it points to,
//! decoded with the `evmcs-layout` crate. Both pages are copied out of guest memory first:
//! the guest may be changing them, and hvkvm never holds references into guest RAM.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::memory::{Bytes, GuestAddress, GuestMemory};

const PAGE: usize = 4096;

/// A VP assist page as the VMM sees it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AssistPageView {
    /// The VP.
    pub vp: u32,
    /// Its GPA.
    pub gpa: u64,
    /// `current_nested_vmcs` when `enlighten_vmentry` is set.
    pub current_evmcs: Option<u64>,
    /// That eVMCS, decoded, when it lies in guest RAM.
    pub evmcs: Option<EvmcsView>,
}

/// An enlightened VMCS, decoded.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EvmcsView {
    /// Its GPA.
    pub gpa: u64,
    /// The revision ID (1 for eVMCS v1).
    pub revision_id: u32,
    /// The clean-fields word (a set bit: group unchanged since the last entry).
    pub clean_fields: u32,
    /// Every field with a non-zero value, by VMCS name.
    pub fields: BTreeMap<String, u64>,
}

fn copy_page(mem: &GuestMemory, gpa: u64) -> Option<Box<[u8; PAGE]>> {
    let mut page = Box::new([0u8; PAGE]);
    mem.read_slice(&mut page[..], GuestAddress(gpa)).ok()?;
    Some(page)
}

/// Decodes VP `vp`'s assist page at `gpa` (and its eVMCS, if any).
pub fn assist_page(mem: &GuestMemory, vp: u32, gpa: u64) -> Option<AssistPageView> {
    let assist = copy_page(mem, gpa)?;
    let current_evmcs = evmcs_layout::vp_assist::current_evmcs(&assist[..])
        .ok()
        .flatten();
    let evmcs = current_evmcs.and_then(|evmcs_gpa| evmcs(mem, evmcs_gpa));
    Some(AssistPageView {
        vp,
        gpa,
        current_evmcs,
        evmcs,
    })
}

/// Decodes the eVMCS at `gpa`.
pub fn evmcs(mem: &GuestMemory, gpa: u64) -> Option<EvmcsView> {
    let page = copy_page(mem, gpa)?;
    let revision_id = u32::from_le_bytes(page[..4].try_into().ok()?);
    let clean_fields = evmcs_layout::access::clean_fields(&page[..]).map_or(0, |c| c.bits());
    let fields = evmcs_layout::FIELD_TABLE
        .iter()
        .filter_map(|f| {
            let value = evmcs_layout::access::read_field(&page[..], f.encoding).ok()?;
            (value != 0).then(|| (f.vmcs_name.to_string(), value))
        })
        .collect();
    Some(EvmcsView {
        gpa,
        revision_id,
        clean_fields,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmcs_layout::{access, vmcs, vp_assist, Page};

    #[test]
    fn decodes_the_evmcs_an_assist_page_announces() {
        let mem = crate::memory::allocate(16).unwrap();
        let mut evmcs_page = Page::ZERO;
        access::initialize(&mut evmcs_page).unwrap();
        access::write_field_and_dirty(&mut evmcs_page, vmcs::GUEST_RIP, 0x1234).unwrap();
        let mut assist = Page::ZERO;
        vp_assist::set_current_evmcs(&mut assist, Some(0x6000)).unwrap();
        mem.write_slice(&evmcs_page.0, GuestAddress(0x6000))
            .unwrap();
        mem.write_slice(&assist.0, GuestAddress(0x5000)).unwrap();
        let view = assist_page(&mem, 1, 0x5000).unwrap();
        assert_eq!(view.current_evmcs, Some(0x6000));
        let evmcs = view.evmcs.unwrap();
        assert_eq!(evmcs.revision_id, 1);
        assert_eq!(evmcs.fields.get("GUEST_RIP"), Some(&0x1234));
        // No eVMCS announced, and pages outside RAM, decode to nothing rather than failing.
        mem.write_slice(&[0u8; 64], GuestAddress(0x5000)).unwrap();
        assert_eq!(assist_page(&mem, 1, 0x5000).unwrap().evmcs, None);
        assert_eq!(assist_page(&mem, 1, 16 << 20), None);
    }
}
