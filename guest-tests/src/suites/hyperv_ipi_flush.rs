//! PV IPI and PV TLB flush of the Hyper-V user backend: KVM's `hyperv_ipi` and
//! `hyperv_tlb_flush` selftests with 2 vCPUs (VP indices in two banks are named, only bank 0
//! holds a VP), the matrix rows for the flush hypercalls (reference §4), and hostile VP sets.

use super::hv_rows::{leaves, sync_of, vcpus, with};
use crate::GuestTest;

use super::{suite_cases, Case};

/// The `hyperv_ipi_flush` suite.
pub fn cases() -> Vec<Case> {
    suite_cases!("hyperv_ipi_flush";
        synthetic_cluster_ipis_reach_exactly_their_targets,
        flush_rows_of_the_enforce_cpuid_matrix,
        a_flush_hypercall_leaves_no_stale_translation_on_its_targets,
    )
}

const SUCCESS: u64 = 0;
const INVALID_HYPERCALL_INPUT: u64 = 3;
const ACCESS_DENIED: u64 = 6;

fn synthetic_cluster_ipis_reach_exactly_their_targets() {
    if vcpus(2) < 2 {
        eprintln!("SKIP: needs 2 host cores for a 2-vCPU guest");
        return;
    }
    let run = super::hv_rows::run_with("hv_ipi", 2, "hv-vpindex,hv-ipi,hv-xmm-input");
    run.expect_done();
    // (case, status, VP 1 got, VP 0 got)
    let expect: &[(u64, u64, u64, u64, &str)] = &[
        (1, SUCCESS, 1, 0, "slow"),
        (2, SUCCESS, 1, 0, "fast"),
        (3, SUCCESS, 1, 0, "Ex slow, one bank"),
        (4, SUCCESS, 1, 0, "Ex XMM-fast, one bank"),
        (5, SUCCESS, 1, 0, "Ex slow, two banks"),
        (6, SUCCESS, 1, 0, "Ex XMM-fast, two banks"),
        (7, SUCCESS, 1, 1, "Ex slow, ALL"),
        (8, SUCCESS, 1, 1, "Ex XMM-fast, ALL"),
        (9, SUCCESS, 1, 0, "Ex slow, 64 banks"),
        (10, INVALID_HYPERCALL_INPUT, 0, 0, "vector 15"),
        (11, INVALID_HYPERCALL_INPUT, 0, 0, "vector 256"),
        (12, INVALID_HYPERCALL_INPUT, 0, 0, "fast, RDX[63:32] set"),
        (
            13,
            INVALID_HYPERCALL_INPUT,
            0,
            0,
            "variable header != popcount(bank mask)",
        ),
        (14, SUCCESS, 0, 0, "empty mask"),
    ];
    for &(case, status, vp1, vp0, what) in expect {
        let got = sync_of(&run, 0, case);
        assert_eq!(got[..3], [status, vp1, vp0], "case {case}: {what}");
    }
    let report = run.outcome.hyperv.as_ref().unwrap();
    // Cases 1-6 and 9 reach VP 1, 7 and 8 both VPs.
    assert_eq!(report.events["synthetic cluster IPIs received"], 11);
}

/// `hv_hypercall` with `code` and the given flags in a fresh VM with `bits`: the status.
fn hypercall(bits: super::hv_rows::Bits, code: u64, flags: u32) -> Result<u64, u64> {
    let run = GuestTest::new("hv_hypercall")
        .hyperv_leaves(leaves(bits))
        .params(&[[code as u32, (code >> 32) as u32, flags, 0], [0, 0, 0, 0]])
        .run();
    run.expect_done();
    let [faulted, _, status, _, setup_faults, vector] = run.sync(1).values;
    assert_eq!(setup_faults, 0);
    if faulted == 1 {
        Err(vector)
    } else {
        Ok(status)
    }
}

fn flush_rows_of_the_enforce_cpuid_matrix() {
    // hv_hypercall flags: enable the page, zeroed input and output pages; fast.
    const SLOW: u32 = 1 | (1 << 2) | (1 << 5);
    const FAST: u32 = 1 | (1 << 1);
    let flush = with(|b| b.eax4 = 1 << 2);
    let flush_ex = with(|b| b.eax4 = (1 << 2) | (1 << 11));
    let xmm = with(|b| {
        b.eax4 = 1 << 2;
        b.edx3 = 1 << 4;
    });
    let rows: &[super::hv_rows::HypercallRow] = &[
        (
            "FlushVASpace without 04.EAX[2]",
            with(|_| {}),
            0x2,
            SLOW,
            Ok(ACCESS_DENIED),
        ),
        ("FlushVASpace with 04.EAX[2]", flush, 0x2, SLOW, Ok(SUCCESS)),
        (
            "FlushVASpaceEx without 04.EAX[11]",
            flush,
            0x13,
            SLOW,
            Ok(ACCESS_DENIED),
        ),
        (
            "FlushVASpaceEx with 04.EAX[11]",
            flush_ex,
            0x13,
            SLOW,
            Ok(SUCCESS),
        ),
        (
            "FlushVASpace | fast without 03.EDX[4]",
            flush,
            0x2,
            FAST,
            Err(6),
        ),
        (
            "FlushVASpace | fast with 03.EDX[4]",
            xmm,
            0x2,
            FAST,
            Ok(SUCCESS),
        ),
        (
            "FlushVAList with rep count 1",
            flush,
            0x3 | (1 << 32),
            SLOW,
            Ok(SUCCESS),
        ),
        (
            "FlushVAList without a rep count",
            flush,
            0x3,
            SLOW,
            Ok(INVALID_HYPERCALL_INPUT),
        ),
    ];
    for &(row, bits, code, flags, expect) in rows {
        assert_eq!(hypercall(bits, code, flags), expect, "{row}");
    }
}

fn a_flush_hypercall_leaves_no_stale_translation_on_its_targets() {
    if vcpus(2) < 2 {
        eprintln!("SKIP: needs 2 host cores for a 2-vCPU guest");
        return;
    }
    let run = super::hv_rows::run_with(
        "hv_tlb_flush",
        2,
        "hv-vpindex,hv-tlbflush,hv-ipi,hv-xmm-input",
    );
    run.expect_done();
    let names = [
        "no flush (control)",
        "FlushVirtualAddressSpace",
        "FlushVirtualAddressSpace XMM-fast",
        "FlushVirtualAddressList",
        "FlushVirtualAddressSpaceEx",
        "FlushVirtualAddressListEx",
        "FlushVirtualAddressSpace ALL_PROCESSORS",
        "FlushVirtualAddressSpaceEx ALL",
        "FlushVirtualAddressSpaceEx XMM-fast, two banks",
        "FlushVirtualAddressSpace, mask 0 (all)",
        "FlushVirtualAddressSpace, the sender only",
        "an IPI to the worker instead of a flush (control)",
    ];
    for (case, name) in names.iter().enumerate() {
        let [status, stale, fresh, reads, cycles, fs_bad] = sync_of(&run, 0, case as u64);
        assert_eq!(fs_bad, 0, "{name}: the worker's FS base changed under it");
        eprintln!(
            "{name}: status {status}, stale before {stale}, fresh after {fresh}, {reads} worker \
             reads meanwhile, {cycles} TSC cycles"
        );
        assert_eq!(status, SUCCESS, "{name}");
        match case {
            // Controls: without a flush (and with a mere exit and re-entry) the worker keeps
            // the old translation, so this test tells a flush from none.
            0 | 11 => {
                assert_eq!(stale, 1, "{name}: no stale translation to begin with");
                assert_eq!(fresh, 0, "{name}: the worker was not flushed");
            }
            // Not a target; with shadow paging the sender's own flush may sync the shadow
            // page both share, so either answer is right.
            10 => {}
            _ => assert_eq!(
                fresh, 1,
                "{name}: the worker read through a stale translation"
            ),
        }
    }
    let report = run.outcome.hyperv.as_ref().unwrap();
    assert!(report.events["remote TLB flushes performed"] >= 10);
    for (name, n) in report.events.iter().filter(|(k, _)| k.contains("TLB")) {
        eprintln!("{name}: {n}");
    }
}
