//! Layout tests: the struct, the field table and the golden data in `golden/` must agree.

mod golden;

use std::collections::{BTreeMap, BTreeSet};

use evmcs_layout::vmcs::{self, FieldWidth};
use evmcs_layout::{
    lookup, CleanGroup, HvEnlightenedVmcs, Member, SyntheticField, VpAssistPage, EVMCS_SIZE,
    FIELD_COUNT, FIELD_TABLE, PAGE_SIZE, UNSUPPORTED_FIELDS,
};

fn member(members: &[Member], name: &str) -> Member {
    *members
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no member {name}"))
}

const fn size_of_member<T>(_: &T) -> usize {
    core::mem::size_of::<T>()
}

/// (encoding, compiler-computed offset, size) for every field, taken from the struct by member
/// name, independently of the crate's table.
macro_rules! struct_layout {
    ($(($enc:literal, $member:ident)),* $(,)?) => {
        &[$((
            $enc,
            core::mem::offset_of!(HvEnlightenedVmcs, $member),
            size_of_member(&HvEnlightenedVmcs::ZERO.$member),
        )),*]
    };
}

const STRUCT_LAYOUT: &[(u32, usize, usize)] = struct_layout![
    (0x0C00, host_es_selector),
    (0x0C02, host_cs_selector),
    (0x0C04, host_ss_selector),
    (0x0C06, host_ds_selector),
    (0x0C08, host_fs_selector),
    (0x0C0A, host_gs_selector),
    (0x0C0C, host_tr_selector),
    (0x2C00, host_ia32_pat),
    (0x2C02, host_ia32_efer),
    (0x6C00, host_cr0),
    (0x6C02, host_cr3),
    (0x6C04, host_cr4),
    (0x6C10, host_ia32_sysenter_esp),
    (0x6C12, host_ia32_sysenter_eip),
    (0x6C16, host_rip),
    (0x4C00, host_ia32_sysenter_cs),
    (0x4000, pin_based_vm_exec_control),
    (0x400C, vm_exit_controls),
    (0x401E, secondary_vm_exec_control),
    (0x2000, io_bitmap_a),
    (0x2002, io_bitmap_b),
    (0x2004, msr_bitmap),
    (0x0800, guest_es_selector),
    (0x0802, guest_cs_selector),
    (0x0804, guest_ss_selector),
    (0x0806, guest_ds_selector),
    (0x0808, guest_fs_selector),
    (0x080A, guest_gs_selector),
    (0x080C, guest_ldtr_selector),
    (0x080E, guest_tr_selector),
    (0x4800, guest_es_limit),
    (0x4802, guest_cs_limit),
    (0x4804, guest_ss_limit),
    (0x4806, guest_ds_limit),
    (0x4808, guest_fs_limit),
    (0x480A, guest_gs_limit),
    (0x480C, guest_ldtr_limit),
    (0x480E, guest_tr_limit),
    (0x4810, guest_gdtr_limit),
    (0x4812, guest_idtr_limit),
    (0x4814, guest_es_ar_bytes),
    (0x4816, guest_cs_ar_bytes),
    (0x4818, guest_ss_ar_bytes),
    (0x481A, guest_ds_ar_bytes),
    (0x481C, guest_fs_ar_bytes),
    (0x481E, guest_gs_ar_bytes),
    (0x4820, guest_ldtr_ar_bytes),
    (0x4822, guest_tr_ar_bytes),
    (0x6806, guest_es_base),
    (0x6808, guest_cs_base),
    (0x680A, guest_ss_base),
    (0x680C, guest_ds_base),
    (0x680E, guest_fs_base),
    (0x6810, guest_gs_base),
    (0x6812, guest_ldtr_base),
    (0x6814, guest_tr_base),
    (0x6816, guest_gdtr_base),
    (0x6818, guest_idtr_base),
    (0x2006, vm_exit_msr_store_addr),
    (0x2008, vm_exit_msr_load_addr),
    (0x200A, vm_entry_msr_load_addr),
    (0x6008, cr3_target_value0),
    (0x600A, cr3_target_value1),
    (0x600C, cr3_target_value2),
    (0x600E, cr3_target_value3),
    (0x4006, page_fault_error_code_mask),
    (0x4008, page_fault_error_code_match),
    (0x400A, cr3_target_count),
    (0x400E, vm_exit_msr_store_count),
    (0x4010, vm_exit_msr_load_count),
    (0x4014, vm_entry_msr_load_count),
    (0x2010, tsc_offset),
    (0x2012, virtual_apic_page_addr),
    (0x2800, vmcs_link_pointer),
    (0x2802, guest_ia32_debugctl),
    (0x2804, guest_ia32_pat),
    (0x2806, guest_ia32_efer),
    (0x280A, guest_pdptr0),
    (0x280C, guest_pdptr1),
    (0x280E, guest_pdptr2),
    (0x2810, guest_pdptr3),
    (0x6822, guest_pending_dbg_exceptions),
    (0x6824, guest_sysenter_esp),
    (0x6826, guest_sysenter_eip),
    (0x4826, guest_activity_state),
    (0x482A, guest_sysenter_cs),
    (0x6000, cr0_guest_host_mask),
    (0x6002, cr4_guest_host_mask),
    (0x6004, cr0_read_shadow),
    (0x6006, cr4_read_shadow),
    (0x6800, guest_cr0),
    (0x6802, guest_cr3),
    (0x6804, guest_cr4),
    (0x681A, guest_dr7),
    (0x6C06, host_fs_base),
    (0x6C08, host_gs_base),
    (0x6C0A, host_tr_base),
    (0x6C0C, host_gdtr_base),
    (0x6C0E, host_idtr_base),
    (0x6C14, host_rsp),
    (0x201A, ept_pointer),
    (0x0000, virtual_processor_id),
    (0x2400, guest_physical_address),
    (0x4400, vm_instruction_error),
    (0x4402, vm_exit_reason),
    (0x4404, vm_exit_intr_info),
    (0x4406, vm_exit_intr_error_code),
    (0x4408, idt_vectoring_info_field),
    (0x440A, idt_vectoring_error_code),
    (0x440C, vm_exit_instruction_len),
    (0x440E, vmx_instruction_info),
    (0x6400, exit_qualification),
    (0x6402, exit_io_instruction_ecx),
    (0x6404, exit_io_instruction_esi),
    (0x6406, exit_io_instruction_edi),
    (0x6408, exit_io_instruction_eip),
    (0x640A, guest_linear_address),
    (0x681C, guest_rsp),
    (0x6820, guest_rflags),
    (0x4824, guest_interruptibility_info),
    (0x4002, cpu_based_vm_exec_control),
    (0x4004, exception_bitmap),
    (0x4012, vm_entry_controls),
    (0x4016, vm_entry_intr_info_field),
    (0x4018, vm_entry_exception_error_code),
    (0x401A, vm_entry_instruction_len),
    (0x401C, tpr_threshold),
    (0x681E, guest_rip),
    (0x2812, guest_bndcfgs),
    (0x2808, guest_ia32_perf_global_ctrl),
    (0x6828, guest_ia32_s_cet),
    (0x682A, guest_ssp),
    (0x682C, guest_ia32_int_ssp_table_addr),
    (0x2816, guest_ia32_lbr_ctl),
    (0x202C, xss_exit_bitmap),
    (0x202E, encls_exiting_bitmap),
    (0x2C04, host_ia32_perf_global_ctrl),
    (0x2032, tsc_multiplier),
    (0x6C18, host_ia32_s_cet),
    (0x6C1A, host_ssp),
    (0x6C1C, host_ia32_int_ssp_table_addr),
];

#[test]
fn structure_sizes() {
    assert_eq!(size_of::<HvEnlightenedVmcs>(), 1024);
    assert_eq!(HvEnlightenedVmcs::SIZE, EVMCS_SIZE);
    assert_eq!(size_of::<VpAssistPage>(), 624);
    assert_eq!(align_of::<evmcs_layout::Page>(), PAGE_SIZE);
}

#[test]
fn table_matches_golden_fields() {
    assert_eq!(FIELD_COUNT, golden::fields().len());
    assert_eq!(FIELD_TABLE.len(), FIELD_COUNT);
    for &(enc, name, tlfs, offset, size, group) in &golden::fields() {
        let f = lookup(enc).unwrap_or_else(|| panic!("{enc:#x} ({name}) missing from FIELD_TABLE"));
        assert_eq!(f.name, name, "{enc:#x}");
        assert_eq!(usize::from(f.offset), offset, "{name}");
        assert_eq!(usize::from(f.size), size, "{name}");
        assert_eq!(f.group.name(), group, "{name}");
        let m = member(HvEnlightenedVmcs::MEMBERS, name);
        assert_eq!(
            (m.offset, m.size, m.tlfs_name),
            (offset, size, tlfs),
            "{name}"
        );
    }
}

#[test]
fn table_offsets_agree_with_struct_offsets() {
    assert_eq!(STRUCT_LAYOUT.len(), FIELD_COUNT);
    for &(enc, offset, size) in STRUCT_LAYOUT {
        let f = lookup(enc).unwrap_or_else(|| panic!("{enc:#x} missing"));
        assert_eq!(
            (usize::from(f.offset), usize::from(f.size)),
            (offset, size),
            "{}",
            f.name
        );
    }
}

#[test]
fn every_field_lies_inside_the_structure_and_page() {
    for f in FIELD_TABLE {
        assert!(
            f.end() <= EVMCS_SIZE && EVMCS_SIZE <= PAGE_SIZE,
            "{} ends at {:#x}",
            f.name,
            f.end()
        );
    }
    for s in SyntheticField::ALL {
        assert!(s.offset() + s.size() <= EVMCS_SIZE, "{s:?}");
    }
}

#[test]
fn no_two_fields_overlap() {
    let mut spans: Vec<(usize, usize, &str)> = FIELD_TABLE
        .iter()
        .map(|f| (usize::from(f.offset), f.end(), f.name))
        .chain(
            SyntheticField::ALL
                .iter()
                .map(|s| (s.offset(), s.offset() + s.size(), s.name())),
        )
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} overlaps {}",
            pair[0].2,
            pair[1].2
        );
    }
}

#[test]
fn members_tile_each_structure() {
    for (members, size) in [
        (HvEnlightenedVmcs::MEMBERS, HvEnlightenedVmcs::SIZE),
        (VpAssistPage::MEMBERS, VpAssistPage::SIZE),
    ] {
        let mut next = 0;
        for m in members {
            assert_eq!(m.offset, next, "gap or overlap before {}", m.name);
            next += m.size;
        }
        assert_eq!(next, size);
    }
}

#[test]
fn every_member_is_a_field_a_synthetic_field_or_reserved() {
    for m in HvEnlightenedVmcs::MEMBERS {
        let in_table = FIELD_TABLE
            .iter()
            .any(|f| f.name == m.name && usize::from(f.offset) == m.offset);
        let synthetic = SyntheticField::ALL
            .iter()
            .any(|s| s.name() == m.name && s.offset() == m.offset);
        let kinds = usize::from(in_table) + usize::from(synthetic) + usize::from(m.is_reserved());
        assert_eq!(
            kinds, 1,
            "{} must be exactly one of field/synthetic/reserved",
            m.name
        );
    }
}

#[test]
fn field_width_matches_encoding_width_class() {
    // No exception: every natural-width field is stored as 8 bytes, the 16/32/64-bit fields at
    // their own width (the TLFS mapping row "0x6c16 HostSysenterCsMsr 4" is a TLFS typo, see
    // `tlfs_mapping_table_rows`).
    for f in FIELD_TABLE {
        let expected = match (f.encoding >> 13) & 3 {
            0 => 2,
            1 => 8,
            2 => 4,
            _ => 8,
        };
        assert_eq!(
            usize::from(f.size),
            expected,
            "{} ({:#x})",
            f.name,
            f.encoding
        );
        assert_eq!(usize::from(f.size), f.width().bytes());
    }
    assert_eq!(FieldWidth::of(vmcs::GUEST_RIP), FieldWidth::Natural);
    assert_eq!(
        FieldWidth::of(vmcs::VIRTUAL_PROCESSOR_ID),
        FieldWidth::Bits16
    );
    assert_eq!(FieldWidth::of(vmcs::TSC_OFFSET), FieldWidth::Bits64);
    assert_eq!(FieldWidth::of(vmcs::VM_EXIT_REASON), FieldWidth::Bits32);
}

#[test]
fn each_clean_group_holds_exactly_its_fields() {
    let mut expected: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for &(enc, _, _, _, _, group) in &golden::fields() {
        expected.entry(group).or_default().insert(enc);
    }
    for group in CleanGroup::ALL_GROUPS {
        let actual: BTreeSet<u32> = FIELD_TABLE
            .iter()
            .filter(|f| f.group == group)
            .map(|f| f.encoding)
            .collect();
        let want = expected.remove(group.name()).unwrap_or_default();
        assert_eq!(actual, want, "clean group {}", group.name());
    }
    assert!(
        expected.is_empty(),
        "groups not in CleanGroup: {expected:?}"
    );
    // ENLIGHTENMENTSCONTROL holds only the synthetic hv_* fields.
    let synthetic: Vec<_> = SyntheticField::ALL
        .into_iter()
        .filter(|s| s.group() == Some(CleanGroup::EnlightenmentsControl))
        .map(SyntheticField::name)
        .collect();
    assert_eq!(
        synthetic,
        [
            "hv_synthetic_controls",
            "hv_enlightenments_control",
            "hv_vp_id",
            "hv_vm_id",
            "partition_assist_page"
        ]
    );
}

#[test]
fn tlfs_mapping_table_rows() {
    for &(enc, tlfs_name, size, group) in &golden::tlfs_mapping() {
        if enc == 0x6C16 {
            // TLFS typo: the row's name/size belong to 0x4C00; 0x6C16 itself is HOST_RIP.
            let rip = lookup(enc).expect("HOST_RIP");
            assert_eq!(
                (rip.name, rip.size, rip.group),
                ("host_rip", 8, CleanGroup::HostGrp1)
            );
            let cs = lookup(vmcs::HOST_IA32_SYSENTER_CS).expect("HOST_IA32_SYSENTER_CS");
            let m = member(HvEnlightenedVmcs::MEMBERS, cs.name);
            assert_eq!(
                (m.tlfs_name, usize::from(cs.size), cs.group.name()),
                (Some(tlfs_name), size, group)
            );
            continue;
        }
        let f = lookup(enc).unwrap_or_else(|| panic!("{enc:#x} ({tlfs_name})"));
        let m = member(HvEnlightenedVmcs::MEMBERS, f.name);
        assert_eq!(m.tlfs_name, Some(tlfs_name), "{enc:#x}");
        assert_eq!(
            (usize::from(f.size), f.group.name()),
            (size, group),
            "{tlfs_name}"
        );
    }
}

#[test]
fn reference_key_offsets() {
    // hyperv-reference.md §3.1 ("computed with gcc from the struct").
    let by_name = |n| usize::from(FIELD_TABLE.iter().find(|f| f.name == n).expect(n).offset);
    for (name, offset) in [
        ("pin_based_vm_exec_control", 0x05C),
        ("msr_bitmap", 0x078),
        ("tsc_offset", 0x190),
        ("ept_pointer", 0x270),
        ("virtual_processor_id", 0x278),
        ("vm_exit_reason", 0x2B4),
        ("exit_qualification", 0x2D0),
        ("guest_rsp", 0x300),
        ("cpu_based_vm_exec_control", 0x314),
        ("guest_rip", 0x330),
        ("guest_bndcfgs", 0x380),
        ("guest_ia32_perf_global_ctrl", 0x388),
        ("xss_exit_bitmap", 0x3C0),
        ("encls_exiting_bitmap", 0x3C8),
        ("host_ia32_perf_global_ctrl", 0x3D0),
        ("tsc_multiplier", 0x3D8),
    ] {
        assert_eq!(by_name(name), offset, "{name}");
    }
    for (field, offset) in [
        (SyntheticField::RevisionId, 0x000),
        (SyntheticField::Abort, 0x004),
        (SyntheticField::CleanFields, 0x338),
        (SyntheticField::SyntheticControls, 0x340),
        (SyntheticField::EnlightenmentsControl, 0x344),
        (SyntheticField::VpId, 0x348),
        (SyntheticField::VmId, 0x350),
        (SyntheticField::PartitionAssistPage, 0x358),
    ] {
        assert_eq!(field.offset(), offset, "{field:?}");
        assert_eq!(
            member(HvEnlightenedVmcs::MEMBERS, field.name()).size,
            field.size()
        );
    }
}

#[test]
fn vp_assist_offsets() {
    // TLFS HV_VP_ASSIST_PAGE + Linux hvgdk_mini.h (hyperv-reference.md §2.3), gcc offsets.
    for (name, offset, size) in [
        ("apic_assist", 0x00, 4),
        ("vtl_entry_reason", 0x08, 4),
        ("vina_status", 0x0C, 1),
        ("vtl_ret_x64rax", 0x10, 8),
        ("vtl_ret_x64rcx", 0x18, 8),
        ("nested_features", 0x20, 4),
        ("nested_hypercall_controls", 0x24, 4),
        ("enlighten_vmentry", 0x28, 1),
        ("current_nested_vmcs", 0x30, 8),
        ("synthetic_time_unhalted_timer_expired", 0x38, 1),
        ("virtualization_fault_information", 0x40, 40),
        ("intercept_message", 0x70, 256),
        ("vtl_ret_actions", 0x170, 256),
    ] {
        let m = member(VpAssistPage::MEMBERS, name);
        assert_eq!((m.offset, m.size), (offset, size), "{name}");
    }
    assert_eq!(evmcs_layout::vp_assist::ENLIGHTEN_VMENTRY_OFFSET, 0x28);
    assert_eq!(evmcs_layout::vp_assist::CURRENT_NESTED_VMCS_OFFSET, 0x30);
    assert_eq!(evmcs_layout::vp_assist::NESTED_FEATURES_OFFSET, 0x20);
}

#[test]
fn unsupported_fields_have_no_home() {
    let mut seen = BTreeSet::new();
    for u in UNSUPPORTED_FIELDS {
        assert!(seen.insert(u.encoding), "{} listed twice", u.name);
        assert!(vmcs::is_well_formed(u.encoding), "{}", u.name);
        assert!(lookup(u.encoding).is_none(), "{} has an eVMCS home", u.name);
        assert_eq!(
            evmcs_layout::read_field(&[0u8; EVMCS_SIZE], u.encoding),
            Err(evmcs_layout::AccessError::NotInEvmcs(u.encoding))
        );
    }
    // TSC_MULTIPLIER is still named by KVM's comment but has had a home since the 2022 layout.
    assert!(!evmcs_layout::version::is_unsupported(vmcs::TSC_MULTIPLIER));
    assert!(evmcs_layout::version::is_unsupported(vmcs::POSTED_INTR_NV));
    assert!(evmcs_layout::version::is_unsupported(
        vmcs::GUEST_IA32_RTIT_CTL
    ));
}

#[test]
fn struct_round_trips_through_bytes() {
    let pattern: Vec<u8> = (0..1100u32)
        .map(|i| (i.wrapping_mul(37) ^ (i >> 3)) as u8)
        .collect();
    let evmcs = HvEnlightenedVmcs::from_bytes(&pattern).expect("long enough");
    assert_eq!(evmcs.to_bytes()[..], pattern[..EVMCS_SIZE]);
    assert_eq!(
        evmcs.guest_rip,
        u64::from_le_bytes(pattern[0x330..0x338].try_into().unwrap())
    );
    assert_eq!(
        u32::from(evmcs.virtual_processor_id),
        u32::from(u16::from_le_bytes([pattern[0x278], pattern[0x279]]))
    );
    for f in FIELD_TABLE {
        let via_table = evmcs_layout::read_field(&pattern[..], f.encoding).unwrap();
        let via_struct = evmcs_layout::read_field(&evmcs.to_bytes(), f.encoding).unwrap();
        assert_eq!(via_table, via_struct, "{}", f.name);
    }
    let vp = VpAssistPage::from_bytes(&pattern).expect("long enough");
    assert_eq!(vp.to_bytes()[..], pattern[..VpAssistPage::SIZE]);
    assert!(HvEnlightenedVmcs::from_bytes(&pattern[..EVMCS_SIZE - 1]).is_err());
    assert!(VpAssistPage::from_bytes(&[]).is_err());
    let mut short = [0u8; 100];
    assert!(evmcs.write_to(&mut short).is_err());
    assert_eq!(short, [0u8; 100], "nothing written on error");
    assert_eq!(HvEnlightenedVmcs::default(), HvEnlightenedVmcs::ZERO);
}
