//! The SynIC of the Hyper-V user backend: the enforce-CPUID matrix rows for the SynIC MSRs
//! (reference §4: EOM), HvPostMessage and HvSignalEvent to a connection registered by the
//! host, messages queued behind a busy slot and redelivered on EOM, event flags, masked SINTs
//! and the SINT vector rule.

use std::sync::Arc;

use super::hv_rows::{leaves, msr_fault, Bits};
use crate::{error_chain, GuestTest};
use hvkvm::hyperv::{CrashAction, GuestSynic, HvConnection, SynicError};
use hvkvm::vm::{self, StopReason, VmOutcome};

use super::{suite_cases, Case};

/// The `hyperv_synic` suite.
pub fn cases() -> Vec<Case> {
    suite_cases!("hyperv_synic";
        messages_and_events_reach_a_registered_connection_and_come_back,
        synic_rows_of_the_enforce_cpuid_matrix,
        post_message_and_signal_event_without_synic_are_invalid_input,
        a_hostile_guest_with_synic_timers_ipis_and_flushes_cannot_crash_or_hang_the_vmm,
    )
}

const ECHO: u32 = 0x1234;
const SUCCESS: u64 = 0;
const INVALID_PARAMETER: u64 = 5;
const INVALID_CONNECTION_ID: u64 = 0x12;
const INSUFFICIENT_BUFFERS: u64 = 0x13;

/// Posts every message back to SINT 4 of the VP in payload byte 0 (type | 0x1000), and
/// answers an event by setting the same flag of the caller's SINT 4.
#[derive(Debug)]
struct Echo;

impl HvConnection for Echo {
    fn post_message(
        &self,
        synic: &dyn GuestSynic,
        _vp: u32,
        message_type: u32,
        payload: &[u8],
    ) -> u16 {
        let target = u32::from(payload.first().copied().unwrap_or(0));
        match synic.post_message(target, 4, message_type | 0x1000, payload) {
            Ok(()) => SUCCESS as u16,
            Err(SynicError::QueueFull(_)) => INSUFFICIENT_BUFFERS as u16,
            Err(_) => INVALID_PARAMETER as u16,
        }
    }

    fn signal_event(&self, synic: &dyn GuestSynic, vp: u32, flag: u16) -> u16 {
        match synic.signal_event(vp, 4, u32::from(flag)) {
            Ok(()) => SUCCESS as u16,
            Err(_) => INVALID_PARAMETER as u16,
        }
    }
}

/// `hv_synic` with the echo registered on connection 0x1234; its outcome once it passed.
fn run_synic() -> VmOutcome {
    let (mut config, serial) = GuestTest::new("hv_synic")
        .hyperv("hv-vpindex,hv-time,hv-synic", CrashAction::Log)
        .into_config();
    config
        .hyperv
        .as_mut()
        .expect("Hyper-V on")
        .connections
        .register(ECHO, Arc::new(Echo))
        .unwrap();
    let outcome = vm::run(config).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert!(outcome.stuck_vcpus.is_empty());
    assert_eq!(
        outcome.reason,
        StopReason::GuestDone,
        "hv_synic failed: {}\n{}",
        outcome.reason,
        serial.contents()
    );
    outcome
}

struct Syncs(VmOutcome);

impl Syncs {
    fn sync(&self, stage: u64) -> Sync {
        let all: Vec<_> = self.0.syncs.iter().filter(|s| s.stage == stage).collect();
        assert_eq!(all.len(), 1, "one SYNC {stage}: {:?}", self.0.syncs);
        Sync {
            values: all[0].values,
        }
    }
}

struct Sync {
    values: [u64; 6],
}

fn messages_and_events_reach_a_registered_connection_and_come_back() {
    let run = Syncs(run_synic());
    assert_eq!(
        run.sync(1).values[..4],
        [
            INVALID_CONNECTION_ID,
            INVALID_CONNECTION_ID,
            INVALID_PARAMETER,
            INVALID_PARAMETER
        ],
        "unknown connections and malformed messages"
    );
    assert_eq!(
        run.sync(2).values[..5],
        [SUCCESS, 1, 0x1007, 0xab00, 16],
        "the echo arrives in SINT 4 with one interrupt"
    );
    assert_eq!(
        run.sync(3).values[..4],
        [SUCCESS, 3, 3, 2],
        "three messages, in order, two EOMs (message_pending while more waited)"
    );
    assert_eq!(
        run.sync(4).values[..3],
        [17, INSUFFICIENT_BUFFERS, 17],
        "one message in the slot, 16 queued, then refused; all 17 delivered through EOMs"
    );
    let [status, interrupts, set, others, fast, set9] = run.sync(5).values;
    assert_eq!(
        [status, interrupts, set, others, fast, set9],
        [SUCCESS, 2, 1, 0, SUCCESS, 1],
        "event flags, one interrupt each"
    );
    assert_eq!(
        run.sync(6).values[..3],
        [SUCCESS, 0, 0x1007],
        "a masked SINT gets the message, no interrupt"
    );
    assert_eq!(
        run.sync(7).values,
        [1, 13, 0, 0x10000, 1, 0],
        "vector 15 unmasked #GPs, 0x10000 (nested Hyper-V's boot value) does not"
    );
    let report = run.0.hyperv.as_ref().expect("usage report");
    let post = &report.hypercalls["PostMessage"];
    assert!(post["SUCCESS"] >= 21 && post["INVALID_CONNECTION_ID"] == 1);
    assert!(report.events["messages from hvkvm queued (slot busy)"] >= 18);
    assert!(report.refused.iter().any(|r| r.contains("SINT5 vector 15")));
}

fn synic_rows_of_the_enforce_cpuid_matrix() {
    const EOM: u32 = 0x4000_0084;
    const SCONTROL: u32 = 0x4000_0080;
    const SVERSION: u32 = 0x4000_0081;
    let synic = Bits {
        eax3: 1 << 2,
        ..Bits::default()
    };
    let (ok, gp) = ((0, 0), (1, 13));
    let rows: &[super::hv_rows::MsrRow] = &[
        ("EOM without 03.EAX[2]", Bits::default(), EOM, None, gp),
        ("EOM with 03.EAX[2]: read", synic, EOM, None, ok),
        ("EOM with 03.EAX[2]: write 0", synic, EOM, Some(0), ok),
        (
            "SCONTROL with 03.EAX[2]: write 1",
            synic,
            SCONTROL,
            Some(1),
            ok,
        ),
        ("SVERSION with 03.EAX[2]: read", synic, SVERSION, None, ok),
        ("SVERSION write", synic, SVERSION, Some(1), gp),
    ];
    for &(row, bits, index, write, expect) in rows {
        assert_eq!(msr_fault(bits, index, write), expect, "{row}");
    }
}

fn post_message_and_signal_event_without_synic_are_invalid_input() {
    // The matrix rows with only the hypercall bits: no SynIC, so INVALID_HYPERCALL_INPUT
    // (KVM's answer without an active SynIC); with the SynIC an empty input is a type-0
    // message (INVALID_PARAMETER) or an event to the unregistered connection 0.
    let hypercall = |bits: Bits, code: u64| {
        let run = GuestTest::new("hv_hypercall")
            .hyperv_leaves(leaves(bits))
            .params(&[[code as u32, 0, 1 | (1 << 2) | (1 << 5), 0], [0, 0, 0, 0]])
            .run();
        run.expect_done();
        let [faulted, _, status, ..] = run.sync(1).values;
        assert_eq!(faulted, 0);
        status
    };
    let post = super::hv_rows::with(|b| b.ebx3 = 1 << 4);
    let signal = super::hv_rows::with(|b| b.ebx3 = 1 << 5);
    assert_eq!(hypercall(post, 0x5c), 3);
    assert_eq!(hypercall(signal, 0x5d), 3);
    let with_synic = |mut b: Bits| {
        b.eax3 |= 1 << 2;
        b
    };
    assert_eq!(hypercall(with_synic(post), 0x5c), INVALID_PARAMETER);
    assert_eq!(hypercall(with_synic(signal), 0x5d), INVALID_CONNECTION_ID);
}

fn a_hostile_guest_with_synic_timers_ipis_and_flushes_cannot_crash_or_hang_the_vmm() {
    let mut list = String::from(
        "hv-relaxed,hv-vpindex,hv-runtime,hv-time,hv-frequencies,hv-synic,hv-stimer,\
         hv-stimer-direct,hv-ipi,hv-tlbflush,hv-xmm-input,hv-spinlocks=0xfff",
    );
    // 03.EDX[14]: KVM has extended flush ranges only since about 6.2.
    if crate::backend_counts_guest_use()
        || crate::kernel_hv_cpuid_has(0x4000_0003, [0, 0, 0, 1 << 14])
    {
        list.push_str(",hv-tlbflush-ext");
    }
    let run = GuestTest::new("hv_fuzz")
        .hyperv(&list, CrashAction::Log)
        .run();
    run.expect_done();
    let [accesses, gp, hypercalls, ud, statuses, _] = run.sync(1).values;
    assert!(
        accesses > 1000 && hypercalls > 100,
        "{accesses}, {hypercalls}"
    );
    assert!(gp > 0 && ud <= hypercalls);
    // Every status is one the TLFS defines.
    let defined: u64 = [0u64, 2, 3, 4, 5, 6, 7, 8, 0x12, 0x13]
        .iter()
        .map(|s| 1 << s)
        .sum();
    assert_eq!(statuses & !defined, 0, "undefined statuses {statuses:#b}");
    let [_, _, _, other_faults, page_enabled, _] = run.sync(2).values;
    assert_eq!((other_faults, page_enabled), (0, 1));
    let [present, sint_gp, _writes, phase3_faults, count, _] = run.sync(3).values;
    assert_eq!(
        [present, sint_gp, phase3_faults, count],
        [1, 16, 0, u64::MAX],
        "SynIC phase: every SINT vector below 16 #GPs, everything else is accepted"
    );
    let report = run.outcome.hyperv.as_ref().unwrap();
    if !crate::backend_counts_guest_use() {
        return;
    }
    // The one-shot into the message page outside RAM waits for an EOM instead of failing.
    assert!(report.events["stimer expirations waiting for EOM"] >= 1);
    // The 100 ns periodic timer ran at the 100 µs floor for 10 ms: about 100 expirations,
    // not 100,000.
    let direct = report.events["stimer direct-mode interrupts"];
    assert!(direct <= 400, "{direct} direct-mode expirations");
}
