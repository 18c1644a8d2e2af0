//! Per-flag CPUID bits, checked against the reference table (hyperv-reference.md §1/§1b), not
//! against the crate's own table: each expected value below is typed from the reference.

mod common;

use std::collections::BTreeMap;

use common::{bits, has_leaf, leaves, regs, resolve_list};
use hv_model::{cpuid_leaves, parse_hv_list, resolve, Backend, HostCapabilities, Irqchip};

const VENDOR: u32 = 0x4000_0000;
const IFACE: u32 = 0x4000_0001;
const VERSION: u32 = 0x4000_0002;
const FEAT: u32 = 0x4000_0003;
const RECO: u32 = 0x4000_0004;
const LIMITS: u32 = 0x4000_0005;
const NEST: u32 = 0x4000_000A;

/// Register-wise XOR between the leaves of two lists: the bits `extra` adds to `base`.
fn added_bits(base: &str, extra: &str) -> BTreeMap<u32, [u32; 4]> {
    let a = leaves(&format!("kvm=off,{base}"));
    let b = leaves(&format!("kvm=off,{base},{extra}"));
    let functions: std::collections::BTreeSet<u32> =
        a.iter().chain(&b).map(|l| l.function).collect();
    functions
        .into_iter()
        .filter_map(|f| {
            let (x, y) = (regs(&a, f), regs(&b, f));
            let d = [x[0] ^ y[0], x[1] ^ y[1], x[2] ^ y[2], x[3] ^ y[3]];
            (d != [0; 4]).then_some((f, d))
        })
        .collect()
}

fn expect(base: &str, extra: &str, expected: &[(u32, [u32; 4])]) {
    let got = added_bits(base, extra);
    let want: BTreeMap<u32, [u32; 4]> = expected.iter().copied().collect();
    assert_eq!(
        got, want,
        "bits added by {extra} on top of {base}:\n got {got:#x?}\n want {want:#x?}"
    );
}

#[test]
fn relaxed_sets_04_eax_5() {
    expect("hv-runtime", "hv-relaxed", &[(RECO, [bits(&[5]), 0, 0, 0])]);
}

#[test]
fn vapic_sets_03_eax_4_and_recommends_apic_msrs() {
    expect(
        "hv-runtime",
        "hv-vapic",
        &[(FEAT, [bits(&[4]), 0, 0, 0]), (RECO, [bits(&[3]), 0, 0, 0])],
    );
}

#[test]
fn spinlocks_value_goes_to_04_ebx() {
    expect(
        "hv-runtime",
        "hv-spinlocks=0x1fff",
        &[(RECO, [0, 0xFFFF_FFFF ^ 0x1FFF, 0, 0])],
    );
    assert_eq!(
        regs(&leaves("hv-runtime"), RECO)[1],
        0xFFFF_FFFF,
        "never notify by default"
    );
}

#[test]
fn vpindex_sets_03_eax_6() {
    expect("hv-runtime", "hv-vpindex", &[(FEAT, [bits(&[6]), 0, 0, 0])]);
}

#[test]
fn runtime_sets_03_eax_0() {
    expect("hv-reset", "hv-runtime", &[(FEAT, [bits(&[0]), 0, 0, 0])]);
}

#[test]
fn crash_sets_03_edx_10() {
    expect("hv-runtime", "hv-crash", &[(FEAT, [0, 0, 0, bits(&[10])])]);
}

#[test]
fn time_sets_03_eax_1_and_9() {
    expect("hv-runtime", "hv-time", &[(FEAT, [bits(&[1, 9]), 0, 0, 0])]);
}

#[test]
fn synic_sets_03_eax_2_and_post_messages_signal_events() {
    expect(
        "hv-vpindex",
        "hv-synic",
        &[(FEAT, [bits(&[2]), bits(&[4, 5]), 0, 0])],
    );
}

#[test]
fn stimer_sets_03_eax_3() {
    expect(
        "hv-vpindex,hv-synic,hv-time",
        "hv-stimer",
        &[(FEAT, [bits(&[3]), 0, 0, 0])],
    );
}

#[test]
fn stimer_direct_sets_03_edx_19() {
    expect(
        "hv-vpindex,hv-synic,hv-time,hv-stimer",
        "hv-stimer-direct",
        &[(FEAT, [0, 0, 0, bits(&[19])])],
    );
}

#[test]
fn tlbflush_sets_04_eax_2_and_11() {
    expect(
        "hv-vpindex",
        "hv-tlbflush",
        &[(RECO, [bits(&[2, 11]), 0, 0, 0])],
    );
}

#[test]
fn tlbflush_ext_sets_03_edx_14() {
    expect(
        "hv-vpindex,hv-tlbflush",
        "hv-tlbflush-ext",
        &[(FEAT, [0, 0, 0, bits(&[14])])],
    );
}

#[test]
fn tlbflush_direct_sets_0a_eax_17_and_raises_the_max_leaf() {
    expect(
        "hv-vapic",
        "hv-tlbflush-direct",
        &[
            (VENDOR, [0x4000_0005 ^ 0x4000_000A, 0, 0, 0]),
            (NEST, [bits(&[17]), 0, 0, 0]),
        ],
    );
}

#[test]
fn ipi_sets_04_eax_10_and_11() {
    expect(
        "hv-vpindex",
        "hv-ipi",
        &[(RECO, [bits(&[10, 11]), 0, 0, 0])],
    );
}

#[test]
fn reset_sets_03_eax_7() {
    expect("hv-runtime", "hv-reset", &[(FEAT, [bits(&[7]), 0, 0, 0])]);
}

#[test]
fn frequencies_sets_03_eax_11_and_edx_8() {
    expect(
        "hv-runtime",
        "hv-frequencies",
        &[(FEAT, [bits(&[11]), 0, 0, bits(&[8])])],
    );
}

#[test]
fn reenlightenment_sets_03_eax_13() {
    expect(
        "hv-runtime",
        "hv-reenlightenment",
        &[(FEAT, [bits(&[13]), 0, 0, 0])],
    );
}

#[test]
fn evmcs_sets_04_eax_14_and_version_range_0101() {
    expect(
        "hv-vapic",
        "hv-evmcs",
        &[
            (VENDOR, [0x4000_0005 ^ 0x4000_000A, 0, 0, 0]),
            (RECO, [bits(&[14]), 0, 0, 0]),
            (NEST, [0x0101, 0, 0, 0]),
        ],
    );
    // QEMU adds zero-filled 0x40000006..0x40000009 before the nested leaf.
    let l = leaves("hv-vapic,hv-evmcs");
    for f in 0x4000_0006..=0x4000_0009 {
        assert!(has_leaf(&l, f), "{f:#x} missing");
        assert_eq!(regs(&l, f), [0; 4]);
    }
}

#[test]
fn emsr_bitmap_sets_0a_eax_19() {
    expect(
        "hv-runtime",
        "hv-emsr-bitmap",
        &[
            (VENDOR, [0x4000_0005 ^ 0x4000_000A, 0, 0, 0]),
            (NEST, [bits(&[19]), 0, 0, 0]),
        ],
    );
}

#[test]
fn xmm_input_sets_03_edx_4() {
    expect(
        "hv-runtime",
        "hv-xmm-input",
        &[(FEAT, [0, 0, 0, bits(&[4])])],
    );
}

#[test]
fn avic_sets_04_eax_9_and_drops_the_apic_access_hint() {
    expect("hv-runtime", "hv-avic", &[(RECO, [bits(&[9]), 0, 0, 0])]);
    // With hv-vapic on, 04.EAX[3] goes away when hv-avic comes.
    expect("hv-vapic", "hv-avic", &[(RECO, [bits(&[9, 3]), 0, 0, 0])]);
    expect("hv-vapic", "hv-apicv", &[(RECO, [bits(&[9, 3]), 0, 0, 0])]);
}

#[test]
fn no_nonarch_coresharing_on_sets_04_eax_18() {
    expect(
        "hv-runtime",
        "hv-no-nonarch-coresharing=on",
        &[(RECO, [bits(&[18]), 0, 0, 0])],
    );
    expect("hv-runtime", "hv-no-nonarch-coresharing=off", &[]);
}

#[test]
fn syndbg_sets_03_edx_11_and_the_syndbg_leaves() {
    expect(
        "hv-vpindex,hv-synic,hv-relaxed",
        "hv-syndbg",
        &[
            (VENDOR, [0x4000_0005 ^ 0x4000_0082, 0, 0, 0]),
            (FEAT, [0, 0, 0, bits(&[11])]),
            // "Microsoft VS"
            (0x4000_0080, [0, 0x7263_694D, 0x666F_736F, 0x5356_2074]),
            // "VS#1"
            (0x4000_0081, [0x3123_5356, 0, 0, 0]),
            // Allow kernel debugging.
            (0x4000_0082, [bits(&[1]), 0, 0, 0]),
        ],
    );
}

#[test]
fn enforce_cpuid_changes_no_bits() {
    expect("hv-runtime", "hv-enforce-cpuid", &[]);
}

#[test]
fn vendor_id_fills_40000000_ebx_ecx_edx() {
    let l = leaves("hv-relaxed,hv-vendor-id=KVMKVMKVM");
    assert_eq!(
        regs(&l, VENDOR),
        [0x4000_0005, 0x4B4D_564B, 0x564B_4D56, 0x0000_004D]
    );
    let l = leaves("hv-relaxed");
    // "Microsoft Hv"
    assert_eq!(
        regs(&l, VENDOR),
        [0x4000_0005, 0x7263_694D, 0x666F_736F, 0x7648_2074]
    );
}

#[test]
fn version_defaults_to_ws2016_and_can_be_overridden() {
    assert_eq!(
        regs(&leaves("hv-relaxed"), VERSION),
        [0x3839, 0x000A_0000, 0, 0]
    );
    let l = leaves(
        "hv-relaxed,hv-version-id-build=0x4563,hv-version-id-major=10,hv-version-id-minor=1,\
         hv-version-id-spack=2,hv-version-id-sbranch=3,hv-version-id-snumber=0x123456",
    );
    assert_eq!(regs(&l, VERSION), [0x4563, 0x000A_0001, 2, 0x0312_3456]);
}

#[test]
fn interface_limits_and_always_on_bits() {
    let l = leaves("kvm=off,hv-relaxed");
    let functions: Vec<u32> = l.iter().map(|l| l.function).collect();
    assert_eq!(functions, (VENDOR..=LIMITS).collect::<Vec<_>>());
    assert_eq!(regs(&l, IFACE), [0x3123_7648, 0, 0, 0], "Hv#1");
    // HypercallMsrs (03.EAX[5]) and CPU dynamic partitioning (03.EDX[3]) are always set.
    assert_eq!(regs(&l, FEAT), [bits(&[5]), 0, 0, bits(&[3])]);
    assert_eq!(regs(&l, LIMITS), [0xFFFF_FFFF, 64, 0, 0]);
    assert!(l.iter().all(|l| l.index == 0));
}

#[test]
fn no_hyperv_means_no_leaves() {
    assert!(leaves("").is_empty());
    assert!(
        leaves("hv-vendor-id=KVMKVMKVM,hv-enforce-cpuid,hv-no-nonarch-coresharing=on").is_empty()
    );
    assert!(!resolve_list("kvm-pv-ipi").unwrap().hyperv_enabled());
}

#[test]
fn kvm_leaves_move_to_0x40000100() {
    let l = leaves("hv-relaxed");
    assert_eq!(
        regs(&l, 0x4000_0100),
        [0x4000_0101, 0x4B4D_564B, 0x564B_4D56, 0x0000_004D]
    );
    assert!(has_leaf(&l, 0x4000_0101));
    let l = leaves("hv-relaxed,kvm=off");
    assert!(!has_leaf(&l, 0x4000_0100) && !has_leaf(&l, 0x4000_0101));
}

#[test]
fn each_kvm_paravirt_feature_sets_its_bit() {
    const ALL: &[&str] = &[
        "kvmclock",
        "kvm-nopiodelay",
        "kvm-asyncpf",
        "kvm-steal-time",
        "kvm-pv-eoi",
        "kvm-pv-unhalt",
        "kvm-pv-tlb-flush",
        "kvm-asyncpf-vmexit",
        "kvm-pv-ipi",
        "kvm-poll-control",
        "kvm-pv-sched-yield",
        "kvm-asyncpf-int",
        "kvm-msi-ext-dest-id",
        "kvmclock-stable-bit",
        "kvm-hint-dedicated",
    ];
    // KVM's cpuid.rst: KVM_FEATURE_* bit numbers; kvmclock is CLOCKSOURCE (0) + CLOCKSOURCE2 (3).
    let expected: &[(&str, u32, u32)] = &[
        ("kvmclock", bits(&[0, 3]), 0),
        ("kvm-nopiodelay", bits(&[1]), 0),
        ("kvm-asyncpf", bits(&[4]), 0),
        ("kvm-steal-time", bits(&[5]), 0),
        ("kvm-pv-eoi", bits(&[6]), 0),
        ("kvm-pv-unhalt", bits(&[7]), 0),
        ("kvm-pv-tlb-flush", bits(&[9]), 0),
        ("kvm-asyncpf-vmexit", bits(&[10]), 0),
        ("kvm-pv-ipi", bits(&[11]), 0),
        ("kvm-poll-control", bits(&[12]), 0),
        ("kvm-pv-sched-yield", bits(&[13]), 0),
        ("kvm-asyncpf-int", bits(&[14]), 0),
        ("kvm-msi-ext-dest-id", bits(&[15]), 0),
        ("kvmclock-stable-bit", bits(&[24]), 0),
        ("kvm-hint-dedicated", 0, bits(&[0])),
    ];
    let opts = hv_model::ResolveOptions {
        irqchip: Irqchip::Split,
        ..common::no_host()
    };
    for &(name, eax, edx) in expected {
        let offs: Vec<String> = ALL.iter().map(|n| format!("{n}=off")).collect();
        let list = format!("hv-relaxed,{},{name}", offs.join(","));
        let r = resolve(
            &parse_hv_list(&list).unwrap(),
            &HostCapabilities::default(),
            Backend::Kernel,
            &opts,
        )
        .unwrap();
        let l = cpuid_leaves(&r);
        assert_eq!(regs(&l, 0x4000_0101), [eax, 0, 0, edx], "{name}");
    }
}
