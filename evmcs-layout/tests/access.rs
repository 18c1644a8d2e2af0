//! Accessor tests: read/write by encoding, clean-bit handling, sync, VP assist helpers, versions.

use evmcs_layout::access::{self, clean_fields, initialize, read_synthetic, set_clean_fields};
use evmcs_layout::vmcs::{self, FieldType};
use evmcs_layout::vp_assist::{self, NestedFeatures};
use evmcs_layout::{
    dirtied_by, lookup, read_field, sync, sync_with_clean, write_field, write_field_and_dirty,
    AccessError, CleanFields, CleanGroup, EnlightenmentsControl, EvmcsVersionRange, Page, PageRead,
    PageWrite, SyntheticField, VmcsImage, EVMCS_SIZE, FIELD_TABLE, PAGE_SIZE,
};

/// A distinct, full 64-bit value per table row.
fn pattern(row: usize) -> u64 {
    0xA5A5_0000_0000_0000 ^ ((row as u64 + 1) * 0x0101_0101_0103)
}

fn truncated(value: u64, size: u8) -> u64 {
    if size == 8 {
        value
    } else {
        value & ((1u64 << (8 * u32::from(size))) - 1)
    }
}

/// An eVMCS page with every table field set to `pattern(row)`.
fn filled_page() -> Page {
    let mut page = Page::ZERO;
    initialize(&mut page).unwrap();
    for (row, f) in FIELD_TABLE.iter().enumerate() {
        write_field(&mut page, f.encoding, pattern(row)).unwrap();
    }
    page
}

#[test]
fn every_encoding_round_trips_and_touches_only_its_bytes() {
    for (row, f) in FIELD_TABLE.iter().enumerate() {
        let mut page = [0xEEu8; PAGE_SIZE];
        let before = page;
        let value = pattern(row);
        write_field(&mut page, f.encoding, value).unwrap();
        assert_eq!(
            read_field(&page, f.encoding).unwrap(),
            truncated(value, f.size),
            "{}",
            f.name
        );
        for (i, (a, b)) in before.iter().zip(page.iter()).enumerate() {
            if !(usize::from(f.offset)..f.end()).contains(&i) {
                assert_eq!(a, b, "{} wrote byte {i:#x}", f.name);
            }
        }
        // Little-endian at the table offset.
        let mut raw = [0u8; 8];
        raw[..usize::from(f.size)].copy_from_slice(&page[usize::from(f.offset)..f.end()]);
        assert_eq!(
            u64::from_le_bytes(raw),
            truncated(value, f.size),
            "{}",
            f.name
        );
    }
}

#[test]
fn every_encoding_round_trips_on_slices_and_pages() {
    let mut vec = vec![0u8; EVMCS_SIZE];
    let mut page = Page::default();
    for (row, f) in FIELD_TABLE.iter().enumerate() {
        write_field(&mut vec[..], f.encoding, pattern(row)).unwrap();
        write_field(&mut page, f.encoding, pattern(row)).unwrap();
    }
    for (row, f) in FIELD_TABLE.iter().enumerate() {
        let want = truncated(pattern(row), f.size);
        assert_eq!(
            read_field(&vec[..], f.encoding).unwrap(),
            want,
            "{}",
            f.name
        );
        assert_eq!(read_field(&page, f.encoding).unwrap(), want, "{}", f.name);
    }
}

#[test]
fn high_access_reads_and_writes_bits_63_32() {
    let mut page = Page::ZERO;
    write_field(&mut page, vmcs::TSC_OFFSET, 0x1122_3344_5566_7788).unwrap();
    assert_eq!(
        read_field(&page, vmcs::TSC_OFFSET | 1).unwrap(),
        0x1122_3344
    );
    write_field(&mut page, vmcs::TSC_OFFSET | 1, 0xFFFF_FFFF_AABB_CCDD).unwrap();
    assert_eq!(
        read_field(&page, vmcs::TSC_OFFSET).unwrap(),
        0xAABB_CCDD_5566_7788
    );
    assert_eq!(
        dirtied_by(vmcs::TSC_OFFSET | 1),
        Some(CleanFields::CONTROL_GRP2)
    );
    // Bit 0 on a 32-bit, 16-bit or natural-width encoding is not a valid encoding.
    for enc in [
        vmcs::GUEST_RIP | 1,
        vmcs::VM_EXIT_REASON | 1,
        vmcs::GUEST_CS_SELECTOR | 1,
    ] {
        assert_eq!(
            read_field(&page, enc),
            Err(AccessError::InvalidEncoding(enc))
        );
        assert_eq!(dirtied_by(enc), None);
    }
}

#[test]
fn writes_truncate_like_vmwrite() {
    let mut page = Page::ZERO;
    write_field(&mut page, vmcs::GUEST_CS_SELECTOR, 0xDEAD_BEEF_0010).unwrap();
    assert_eq!(read_field(&page, vmcs::GUEST_CS_SELECTOR).unwrap(), 0x0010);
    write_field(&mut page, vmcs::VM_ENTRY_CONTROLS, 0x1_0000_0200).unwrap();
    assert_eq!(read_field(&page, vmcs::VM_ENTRY_CONTROLS).unwrap(), 0x200);
    // The neighbour of a truncated write is untouched.
    assert_eq!(read_field(&page, vmcs::GUEST_SS_SELECTOR).unwrap(), 0);
}

#[test]
fn no_encoding_panics_and_only_table_encodings_resolve() {
    let page = filled_page();
    let table: std::collections::BTreeSet<u32> = FIELD_TABLE.iter().map(|f| f.encoding).collect();
    let extra = [
        0x1_0000,
        0x8000,
        0xFFFF_FFFF,
        0x8000_681E,
        0x1000 | vmcs::GUEST_RIP,
    ];
    for enc in (0..=0xFFFFu32).chain(extra) {
        let result = read_field(&page, enc);
        let full = enc & !1;
        let expect_ok = vmcs::is_well_formed(enc) && table.contains(&full);
        assert_eq!(result.is_ok(), expect_ok, "{enc:#x}: {result:?}");
        if !vmcs::is_well_formed(enc) {
            assert_eq!(result, Err(AccessError::InvalidEncoding(enc)));
        } else if !expect_ok {
            assert_eq!(result, Err(AccessError::NotInEvmcs(enc)));
        }
        assert_eq!(lookup(enc).is_some(), enc & 1 == 0 && expect_ok, "{enc:#x}");
    }
}

#[test]
fn short_buffers_are_errors_not_panics() {
    let full = filled_page();
    for len in 0..=EVMCS_SIZE {
        let bytes = &full.0[..len];
        let mut copy = bytes.to_vec();
        for f in FIELD_TABLE {
            let fits = f.end() <= len;
            assert_eq!(
                read_field(bytes, f.encoding).is_ok(),
                fits,
                "{} len {len}",
                f.name
            );
            let w = write_field(&mut copy[..], f.encoding, 1);
            assert_eq!(w.is_ok(), fits, "{} len {len}", f.name);
            if !fits {
                assert!(matches!(w, Err(AccessError::OutOfBounds { .. })));
            }
        }
    }
    let mut image = VmcsImage::new();
    assert!(sync(&full.0[..0x300], &mut image).is_err());
    assert!(sync_with_clean(&full.0[..0x300], &mut image, CleanFields::empty()).is_err());
    assert!(clean_fields(&[0u8; 4][..]).is_err());
    assert!(initialize(&mut [0u8; 16][..]).is_err());
    assert!(vp_assist::current_evmcs(&[1u8; 0x30][..]).is_err());
}

#[test]
fn write_reports_the_group_it_dirties() {
    let mut page = Page::ZERO;
    for f in FIELD_TABLE {
        let dirtied = write_field(&mut page, f.encoding, 0).unwrap();
        assert_eq!(dirtied, f.group.dirty_mask(), "{}", f.name);
        assert_eq!(dirtied_by(f.encoding), Some(dirtied));
    }
    assert_eq!(dirtied_by(vmcs::GUEST_RSP), Some(CleanFields::GUEST_BASIC));
    assert_eq!(dirtied_by(vmcs::GUEST_RIP), Some(CleanFields::empty()));
    assert_eq!(dirtied_by(vmcs::CR3_TARGET_COUNT), Some(CleanFields::ALL));
    assert_eq!(dirtied_by(vmcs::POSTED_INTR_NV), None);
}

#[test]
fn write_and_dirty_clears_exactly_the_group_bit() {
    let mut page = Page::ZERO;
    initialize(&mut page).unwrap();
    // Undefined high bits survive the read-modify-write.
    let all_clean = CleanFields::from_bits_retain(0xABCD_FFFF);
    for f in FIELD_TABLE {
        set_clean_fields(&mut page, all_clean).unwrap();
        write_field_and_dirty(&mut page, f.encoding, 7).unwrap();
        let after = clean_fields(&page).unwrap();
        assert_eq!(
            after,
            all_clean.difference(f.group.dirty_mask()),
            "{}",
            f.name
        );
        assert_eq!(read_field(&page, f.encoding).unwrap(), 7);
    }
    set_clean_fields(&mut page, CleanFields::ALL).unwrap();
    write_field_and_dirty(&mut page, vmcs::GUEST_RIP, 1).unwrap();
    assert_eq!(
        clean_fields(&page).unwrap(),
        CleanFields::ALL,
        "RIP has no clean bit"
    );
    write_field_and_dirty(&mut page, vmcs::VM_EXIT_MSR_LOAD_COUNT, 1).unwrap();
    assert_eq!(
        clean_fields(&page).unwrap(),
        CleanFields::empty(),
        "no group: dirties all"
    );
}

/// Rows copied by a sync with `clean`, by the rule in the `access` docs.
fn expected_rows(clean: CleanFields) -> Vec<usize> {
    FIELD_TABLE
        .iter()
        .enumerate()
        .filter(|(_, f)| f.field_type() != FieldType::ReadOnly)
        .filter(|(_, f)| match f.group.bit() {
            None => true,
            Some(bit) => clean.bits() & (1 << bit) == 0,
        })
        .map(|(row, _)| row)
        .collect()
}

fn check_sync(clean: CleanFields) -> evmcs_layout::SyncReport {
    let mut page = filled_page();
    set_clean_fields(&mut page, clean).unwrap();
    let mut image = VmcsImage::new();
    let report = sync(&page, &mut image).unwrap();
    let rows = expected_rows(clean);
    for (row, f) in FIELD_TABLE.iter().enumerate() {
        let want = if rows.contains(&row) {
            truncated(pattern(row), f.size)
        } else {
            0
        };
        assert_eq!(
            image.get(f.encoding).unwrap(),
            want,
            "{} with clean {clean:?}",
            f.name
        );
    }
    let enl = usize::from(!clean.contains(CleanFields::ENLIGHTENMENTS_CONTROL)) * 5;
    assert_eq!(report.fields_copied, rows.len() + enl);
    assert_eq!(report.reloaded, CleanFields::ALL.difference(clean));
    report
}

#[test]
fn sync_with_no_dirty_group_copies_only_unprotected_fields() {
    let report = check_sync(CleanFields::ALL);
    // GUEST_RIP, TPR_THRESHOLD and the 13 fields with no TLFS group.
    assert_eq!(report.fields_copied, 2 + 13);
}

#[test]
fn sync_with_one_dirty_group_copies_that_group() {
    for group in CleanGroup::ALL_GROUPS {
        if group.bit().is_some() {
            check_sync(CleanFields::ALL.difference(group.dirty_mask()));
        }
    }
    let report = check_sync(CleanFields::ALL - CleanFields::GUEST_BASIC);
    assert_eq!(report.fields_copied, 15 + 4);
}

#[test]
fn sync_with_everything_dirty_copies_every_writable_field() {
    let report = check_sync(CleanFields::empty());
    let read_only = FIELD_TABLE.iter().filter(|f| f.is_read_only()).count();
    assert_eq!(read_only, 15);
    assert_eq!(report.fields_copied, FIELD_TABLE.len() - read_only + 5);
}

#[test]
fn sync_keeps_cached_values_of_clean_groups() {
    let mut page = filled_page();
    let mut image = VmcsImage::new();
    sync_with_clean(&page, &mut image, CleanFields::empty()).unwrap();
    // L1 changes RSP without clearing GUEST_BASIC: L0 keeps its cached RSP.
    write_field(&mut page, vmcs::GUEST_RSP, 0x1234).unwrap();
    set_clean_fields(&mut page, CleanFields::ALL).unwrap();
    sync(&page, &mut image).unwrap();
    assert_ne!(image.get(vmcs::GUEST_RSP).unwrap(), 0x1234);
    // Cleared properly, it is picked up.
    write_field_and_dirty(&mut page, vmcs::GUEST_RSP, 0x1234).unwrap();
    let report = sync(&page, &mut image).unwrap();
    assert_eq!(report.reloaded, CleanFields::GUEST_BASIC);
    assert_eq!(image.get(vmcs::GUEST_RSP).unwrap(), 0x1234);
}

#[test]
fn sync_reads_enlightenments_when_their_bit_is_clear() {
    let mut page = Page::ZERO;
    initialize(&mut page).unwrap();
    let control = EnlightenmentsControl::NESTED_FLUSH_HYPERCALL | EnlightenmentsControl::MSR_BITMAP;
    access::write_synthetic(
        &mut page,
        SyntheticField::EnlightenmentsControl,
        control.bits().into(),
    )
    .unwrap();
    access::write_synthetic(&mut page, SyntheticField::VpId, 3).unwrap();
    access::write_synthetic(&mut page, SyntheticField::VmId, 0x77).unwrap();
    access::write_synthetic(&mut page, SyntheticField::PartitionAssistPage, 0x5000).unwrap();
    access::write_synthetic(&mut page, SyntheticField::SyntheticControls, 1).unwrap();
    let mut image = VmcsImage::new();
    sync_with_clean(&page, &mut image, CleanFields::ALL).unwrap();
    assert_eq!(image.enlightenments, Default::default());
    sync_with_clean(
        &page,
        &mut image,
        CleanFields::ALL - CleanFields::ENLIGHTENMENTS_CONTROL,
    )
    .unwrap();
    let e = image.enlightenments;
    assert_eq!(
        (e.control_flags(), e.vp_id, e.vm_id, e.partition_assist_page),
        (control, 3, 0x77, 0x5000)
    );
    assert_eq!(e.synthetic_controls, 1);
}

#[test]
fn image_is_keyed_by_encoding() {
    let mut image = VmcsImage::default();
    image.set(vmcs::GUEST_CR3, 0x1000).unwrap();
    image.set(vmcs::GUEST_ES_SELECTOR, 0x1_0018).unwrap();
    image
        .set(vmcs::EPT_POINTER | 1, 0xAAAA_BBBB_0000_0001)
        .unwrap();
    assert_eq!(image.get(vmcs::GUEST_CR3), Ok(0x1000));
    assert_eq!(image.get(vmcs::GUEST_ES_SELECTOR), Ok(0x18));
    assert_eq!(image.get(vmcs::EPT_POINTER), Ok(0x1_0000_0000));
    assert_eq!(
        image.get(vmcs::POSTED_INTR_NV),
        Err(AccessError::NotInEvmcs(vmcs::POSTED_INTR_NV))
    );
    assert_eq!(
        image.set(0xFFFF_FFFF, 1),
        Err(AccessError::InvalidEncoding(0xFFFF_FFFF))
    );
    let set: Vec<_> = image.iter().filter(|&(_, v)| v != 0).collect();
    assert_eq!(set.len(), 3);
    assert_eq!(image.iter().count(), FIELD_TABLE.len());
}

#[test]
fn initialize_zeroes_and_sets_revision() {
    let mut page = Page([0xFF; PAGE_SIZE]);
    initialize(&mut page).unwrap();
    assert_eq!(read_synthetic(&page, SyntheticField::RevisionId), Ok(1));
    assert!(page.0[4..EVMCS_SIZE].iter().all(|&b| b == 0));
    assert_eq!(
        clean_fields(&page),
        Ok(CleanFields::empty()),
        "fresh eVMCS: all dirty"
    );
}

#[test]
fn vp_assist_page_enlightened_entry() {
    let mut assist = Page::ZERO;
    assert_eq!(vp_assist::current_evmcs(&assist), Ok(None));
    vp_assist::set_current_evmcs(&mut assist, Some(0x1234_5000)).unwrap();
    assert_eq!(assist.0[0x28], 1);
    assert_eq!(vp_assist::current_evmcs(&assist), Ok(Some(0x1234_5000)));
    vp_assist::set_current_evmcs(&mut assist, None).unwrap();
    assert_eq!(vp_assist::current_evmcs(&assist), Ok(None));
    // Any non-zero byte enables it, as KVM reads it.
    assist.0[0x28] = 0x80;
    assert_eq!(vp_assist::current_evmcs(&assist), Ok(Some(0x1234_5000)));

    vp_assist::set_nested_features(&mut assist, NestedFeatures::DIRECT_HYPERCALL).unwrap();
    assert_eq!(assist.0[0x20..0x24], [1, 0, 0, 0]);
    assert_eq!(
        vp_assist::nested_features(&assist),
        Ok(NestedFeatures::DIRECT_HYPERCALL)
    );

    let parsed = evmcs_layout::VpAssistPage::from_bytes(&assist.0).unwrap();
    assert_eq!(
        (parsed.current_nested_vmcs, parsed.nested_features),
        (0x1234_5000, 1)
    );

    assert_eq!(vp_assist::assist_page_gpa(0x1234_5001), Some(0x1234_5000));
    assert_eq!(vp_assist::assist_page_gpa(0x1234_5000), None);
}

#[test]
fn version_range_encoding() {
    let v1 = EvmcsVersionRange::V1;
    assert_eq!(v1.to_raw(), 0x0101);
    assert_eq!(EvmcsVersionRange::from_raw(0x0101), Some(v1));
    let r = EvmcsVersionRange::from_raw(0x0301).unwrap();
    assert_eq!((r.min(), r.max()), (1, 3));
    assert!(r.contains(2) && !r.contains(4) && !r.contains(0));
    assert_eq!(EvmcsVersionRange::from_raw(0), None, "no eVMCS support");
    assert_eq!(EvmcsVersionRange::from_raw(0x0102), None, "min > max");
    assert_eq!(r.intersect(v1), Some(v1));
    assert_eq!(EvmcsVersionRange::new(2, 3).unwrap().intersect(v1), None);
    assert_eq!(evmcs_layout::EVMCS_VERSION, 1);
}

#[test]
fn errors_display() {
    for e in [
        AccessError::InvalidEncoding(0x1_0000),
        AccessError::NotInEvmcs(2),
        AccessError::OutOfBounds {
            offset: 0x330,
            len: 8,
            available: 16,
        },
        AccessError::Backing { offset: 8 },
    ] {
        assert!(!e.to_string().is_empty());
        let _: &dyn std::error::Error = &e;
    }
}

/// A backing with only the required methods, like a VMM's wrapper over guest memory.
struct MinimalBacking(Vec<u8>);

impl PageRead for MinimalBacking {
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        self.0.as_slice().read_bytes(offset, buf)
    }
}

impl PageWrite for MinimalBacking {
    fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        self.0.as_mut_slice().write_bytes(offset, data)
    }
}

#[test]
fn slice_fast_paths_match_the_default_methods() {
    let base: Vec<u8> = (0..EVMCS_SIZE).map(|i| (i * 7 + 3) as u8).collect();
    for size in 0..=9 {
        for offset in [
            0,
            1,
            0x330,
            EVMCS_SIZE - 8,
            EVMCS_SIZE - 1,
            EVMCS_SIZE,
            usize::MAX,
        ] {
            let minimal = MinimalBacking(base.clone());
            assert_eq!(
                base.as_slice().read_le(offset, size),
                minimal.read_le(offset, size),
                "read size {size} at {offset:#x}"
            );
            let mut fast = base.clone();
            let mut slow = MinimalBacking(base.clone());
            let value = 0x0102_0304_0506_0708;
            assert_eq!(
                fast.as_mut_slice().write_le(offset, size, value),
                slow.write_le(offset, size, value),
                "write size {size} at {offset:#x}"
            );
            assert_eq!(fast, slow.0);
        }
    }
}

#[test]
fn sync_through_a_minimal_backing_matches_slices() {
    let page = filled_page();
    let backing = MinimalBacking(page.0.to_vec());
    let (mut a, mut b) = (VmcsImage::new(), VmcsImage::new());
    let ra = sync_with_clean(&page, &mut a, CleanFields::empty()).unwrap();
    let rb = sync_with_clean(&backing, &mut b, CleanFields::empty()).unwrap();
    assert_eq!((ra, a), (rb, b));
}
