//! Layout of the Hyper-V enlightened VMCS (eVMCS v1) and the VP assist page, with the
//! VMCS-encoding → eVMCS field map and accessors over plain bytes.
//!
//! An L1 hypervisor running on Hyper-V does not use VMREAD/VMWRITE. It writes an enlightened VMCS
//! in its own memory, clears the clean-field bit of every group it changed, and points the
//! hypervisor at it through the VP assist page (`enlighten_vmentry`, `current_nested_vmcs`). This
//! crate describes those structures for three users: the VMM (inspecting a guest's live eVMCS,
//! nested save/restore), the L1 test hypervisor in guest code (writing one), and the benchmarks.
//!
//! - [`HvEnlightenedVmcs`], [`VpAssistPage`]: `#[repr(C)]` layouts; the size and the offset of
//!   every member are compile-time assertions against values derived from the TLFS.
//! - [`FIELD_TABLE`], [`lookup`]: VMCS encoding → offset, size, [`CleanGroup`].
//! - [`CleanFields`], [`EnlightenmentsControl`], [`EvmcsVersionRange`], [`UNSUPPORTED_FIELDS`].
//! - [`access`]: read/write by encoding over a [`PageRead`]/[`PageWrite`] backing (`[u8]`,
//!   `[u8; N]`, [`Page`], or the VMM's guest memory), and [`sync`] into a [`VmcsImage`].
//! - [`json`]: the tables as JSON (`cargo run -p evmcs-layout --example dump_table`).
//!
//! `#![no_std]`, no `unsafe`, no allocation, no floating point: it builds for the freestanding
//! guest payload (SSE disabled) as well as for the host.
//!
//! Sources: TLFS `datatypes/hv_vmx_enlightened_vmcs.md`, `hv_vp_assist_page.md` and related
//! pages; Linux `include/hyperv/hvgdk.h`, `hvgdk_mini.h`, `arch/x86/kvm/vmx/hyperv_evmcs.{c,h}`;
//! Intel SDM Vol. 3 appendix "Field Encoding in VMCS". The README lists where they disagree.
//!
//! ```
//! use evmcs_layout::{access, vmcs, CleanFields, Page, VmcsImage};
//!
//! // L1: a fresh eVMCS, one field written the enlightened way.
//! let mut page = Page::ZERO;
//! access::initialize(&mut page)?;
//! access::set_clean_fields(&mut page, CleanFields::ALL)?;
//! let dirtied = access::write_field_and_dirty(&mut page, vmcs::GUEST_RSP, 0x8000)?;
//! assert_eq!(dirtied, CleanFields::GUEST_BASIC);
//!
//! // L0: consume only what changed.
//! let mut image = VmcsImage::new();
//! let report = access::sync(&page, &mut image)?;
//! assert_eq!(report.reloaded, CleanFields::GUEST_BASIC);
//! assert_eq!(image.get(vmcs::GUEST_RSP)?, 0x8000);
//! # Ok::<(), evmcs_layout::AccessError>(())
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod access;
pub mod clean;
pub mod evmcs;
pub mod fields;
pub mod json;
mod layout;
pub mod version;
pub mod vmcs;
pub mod vp_assist;

pub use access::{
    read_field, sync, sync_with_clean, write_field, write_field_and_dirty, AccessError,
    Enlightenments, Page, PageRead, PageWrite, SyncReport, VmcsImage,
};
pub use clean::{CleanFields, CleanGroup, EnlightenmentsControl};
pub use evmcs::HvEnlightenedVmcs;
pub use fields::{dirtied_by, lookup, EvmcsField, SyntheticField, FIELD_COUNT, FIELD_TABLE};
pub use layout::Member;
pub use version::{EvmcsVersionRange, UnsupportedField, EVMCS_VERSION, UNSUPPORTED_FIELDS};
pub use vp_assist::VpAssistPage;

/// Size of a page: the eVMCS and the VP assist page each occupy one.
pub const PAGE_SIZE: usize = 4096;

/// Size of the eVMCS v1 structure at the start of its page (TLFS: 1024 bytes).
pub const EVMCS_SIZE: usize = 0x400;

static_assertions::const_assert_eq!(core::mem::size_of::<HvEnlightenedVmcs>(), EVMCS_SIZE);
static_assertions::const_assert!(core::mem::size_of::<VpAssistPage>() <= PAGE_SIZE);
