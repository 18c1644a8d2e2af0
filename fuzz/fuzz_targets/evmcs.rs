//! The eVMCS and VP assist page decoders: evmcs-layout's accessors over guest bytes of any
//! length (reads by fuzzed encodings, every known field, synthetic members, clean bits, the
//! L0 sync), and hvkvm's inspector that follows an assist page to the eVMCS it announces in
//! guest memory.
//!
//! Input layout: a flags byte, four fuzzed encodings, a backing length, then the bytes: the
//! first 64 are also the head of the assist page (all of it the VP assist page defines), the
//! rest the eVMCS page the inspector decodes (its fields end at 0x400, so 1 KiB covers them).
#![no_main]

use std::sync::OnceLock;

use evmcs_layout::{access, vp_assist, CleanFields, SyntheticField, VmcsImage, FIELD_TABLE};
use hvkvm::memory::{Bytes, GuestAddress, GuestMemory};
use hvkvm_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// One guest RAM for every run (16 MiB, mapped once): the inspector copies pages out of it.
fn guest() -> &'static GuestMemory {
    static MEM: OnceLock<GuestMemory> = OnceLock::new();
    MEM.get_or_init(|| hvkvm::memory::allocate(16).expect("16 MiB of guest RAM"))
}

const ASSIST_GPA: u64 = 0x5000;
const EVMCS_GPA: u64 = 0x6000;

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.u8();
    let encodings = [input.u32(), input.u32(), input.u32(), input.u32()];
    let len = usize::from(u16::from_le_bytes([input.u8(), input.u8()])) % (2 * 4096 + 1);
    let rest = input.rest();
    // The backing: the input's bytes, zero-extended or cut to `len`.
    let mut page = rest.to_vec();
    page.resize(len, 0);
    let bytes = &page[..];

    for e in encodings {
        let _ = access::read_field(bytes, e);
        let _ = evmcs_layout::lookup(e);
        let _ = evmcs_layout::dirtied_by(e);
    }
    for f in FIELD_TABLE {
        let _ = access::read_field(bytes, f.encoding);
    }
    for s in SyntheticField::ALL {
        let _ = access::read_synthetic(bytes, s);
    }
    let _ = access::clean_fields(bytes);
    let _ = vp_assist::current_evmcs(bytes);
    let _ = vp_assist::nested_features(bytes);
    let mut image = VmcsImage::default();
    let _ = access::sync(bytes, &mut image);
    let clean = CleanFields::from_bits_retain(encodings[0]);
    let _ = access::sync_with_clean(bytes, &mut image, clean);
    for (encoding, value) in image.iter() {
        // What sync copied must be readable back by its encoding.
        assert!(image.get(encoding).is_ok_and(|v| v == value));
    }

    // The inspector: an assist page at ASSIST_GPA headed by the first 64 bytes, and the rest
    // as the page it points to (at EVMCS_GPA, or wherever the input says, in RAM or not).
    let mem = guest();
    let (assist, evmcs) = rest.split_at(rest.len().min(64));
    let mut a = [0u8; 4096];
    a[..assist.len()].copy_from_slice(assist);
    if flags & 1 != 0 {
        let _ = vp_assist::set_current_evmcs(&mut a, Some(EVMCS_GPA));
    }
    let mut e = [0u8; 4096];
    e[..evmcs.len().min(4096)].copy_from_slice(&evmcs[..evmcs.len().min(4096)]);
    mem.write_slice(&a, GuestAddress(ASSIST_GPA)).expect("in RAM");
    mem.write_slice(&e, GuestAddress(EVMCS_GPA)).expect("in RAM");
    let _ = hvkvm::hyperv::inspect::assist_page(mem, 0, ASSIST_GPA);
    let _ = hvkvm::hyperv::inspect::evmcs(mem, u64::from(encodings[1]) << 12 | u64::from(flags));
});
