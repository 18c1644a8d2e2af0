//! Saving and restoring the user backend: [`UserBackend::save`] returns a
//! [`UserBackendState`] (plain data, serialised into the snapshot's `vm` file) and
//! [`UserBackend::restore`] builds a backend from one.
//!
//! # What is saved
//! - the reference clock: guest TSC rate, the 64.64 scale and the offset, so that reference
//!   time continues exactly where it stopped (guest time does not advance while a VM is
//!   paused or saved: docs/snapshot.md, "Clocks");
//! - the partition MSRs, the TSC page's sequence and the crash reports;
//! - per VP: the VP assist page MSR.
//!
//! The usage report so far is saved too: a restored guest's report covers its whole life.
//!
//! - per VP: the SynIC (SCONTROL, SIEFP, SIMP, the SINTs and the messages hvkvm code queued;
//!   the message and event-flag pages are guest RAM) and the four synthetic timers, each
//!   with its expiration as an absolute reference time: reference time is continuous across
//!   a restore, so a timer due 3 ms after the snapshot fires 3 ms after the restore, neither
//!   at once nor never. The restored backend re-arms its timer thread with them;
//! - the time dilation factor (a restored guest keeps the sense of time it had).
//!
//! The timer thread is quiet while a VM is paused (`UserBackend::quiesce`), so nothing writes
//! guest memory or injects an interrupt between the vCPU state and this state being read.
//!
//! More state: per-VP in [`VpSnapshot`], partition-wide in [`PartitionState`], each new field
//! with `#[serde(default)]` (older snapshots then restore with the default).
//!
//! # A different TSC rate (reenlightenment)
//! When the restoring host runs the guest's TSC at another rate and has no TSC scaling, the
//! migration rules (`crate::vm::snapshot`) allow the restore only if the guest enabled
//! reenlightenment. [`RateChange::Reenlighten`] then: rescales the reference clock to the new
//! rate with the same reference time at the restore instant (TIME_REF_COUNT never jumps and
//! TSC_FREQUENCY reports the new rate); sets TSC_EMULATION_STATUS.InProgress when the guest
//! enabled TSC_EMULATION_CONTROL; and keeps the TSC page invalid (sequence 0, so readers use
//! TIME_REF_COUNT) until the guest acknowledges by clearing TSC_EMULATION_STATUS, when the page
//! is published with the new scale. hvkvm cannot trap RDTSC to emulate the old rate, so the
//! page is never left describing a rate the TSC does not run at. The caller delivers the
//! reenlightenment interrupt (vector and target VP from REENLIGHTENMENT_CONTROL).

use std::sync::Mutex;

use hyperv_tlfs::msr::{REENLIGHTENMENT_ENABLED, REENLIGHTENMENT_VECTOR_MASK};
use serde::{Deserialize, Serialize};

use super::clock::{self, ReferenceClock};
use super::partition::Partition;
use super::stimer::{Stimer, StimerState};
use super::synic::{Synic, SynicState};
use super::{UserBackend, UserBackendParams};
use crate::host_quirks::MAX_TIME_DILATION;

/// The saved reference clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockState {
    /// 64.64 fixed-point 100 ns units per TSC tick.
    pub scale: u64,
    /// Added after scaling.
    pub offset: i64,
}

/// Partition-wide MSRs and what goes with them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionState {
    /// GUEST_OS_ID.
    pub guest_os_id: u64,
    /// HYPERCALL.
    pub hypercall: u64,
    /// REFERENCE_TSC.
    pub reference_tsc: u64,
    /// The sequence last published in the TSC page.
    pub tsc_page_sequence: u32,
    /// CRASH_P0..P4.
    pub crash: [u64; 5],
    /// CRASH_CTL.
    pub crash_ctl: u64,
    /// REENLIGHTENMENT_CONTROL.
    pub reenlightenment_control: u64,
    /// TSC_EMULATION_CONTROL.
    pub tsc_emulation_control: u64,
    /// TSC_EMULATION_STATUS.
    pub tsc_emulation_status: u64,
    /// TSC_INVARIANT_CONTROL.
    pub tsc_invariant_control: u64,
    /// Crash reports made so far.
    pub crashes: Vec<[u64; 5]>,
}

/// One VP's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpSnapshot {
    /// VP_ASSIST_PAGE.
    pub assist_page: u64,
    /// The SynIC.
    #[serde(default)]
    pub synic: SynicState,
    /// STIMER0..3.
    #[serde(default)]
    pub timers: Vec<StimerState>,
}

/// Everything the user backend needs to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBackendState {
    /// The guest TSC rate the clock was built for, in Hz.
    pub tsc_hz: u64,
    /// The reference clock (None: a TSC too slow for a 64.64 scale).
    pub clock: Option<ClockState>,
    /// Partition-wide state.
    pub partition: PartitionState,
    /// Per-VP state, by VP index.
    pub vps: Vec<VpSnapshot>,
    /// What the guest used up to the snapshot (its usage report then), so the report of the
    /// restored guest covers its whole life.
    #[serde(default)]
    pub usage: Option<crate::hyperv::report::UsageReport>,
    /// The time dilation factor (`UserBackendParams::time_dilation`); `tsc_hz` includes it.
    #[serde(default = "no_dilation")]
    pub time_dilation: u32,
}

fn no_dilation() -> u32 {
    1
}

/// How the restored guest's TSC relates to the saved one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateChange {
    /// It runs at the saved rate (same host rate, or TSC scaling).
    Same,
    /// It runs at `UserBackendParams::tsc_khz`, a different rate, and the guest is told
    /// through reenlightenment.
    Reenlighten,
}

/// The interrupt that tells the guest its TSC rate changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reenlightenment {
    /// REENLIGHTENMENT_CONTROL's vector.
    pub vector: u8,
    /// REENLIGHTENMENT_CONTROL's target VP.
    pub target_vp: u32,
}

/// Decodes REENLIGHTENMENT_CONTROL: the interrupt, when the guest enabled it.
pub fn reenlightenment(control: u64) -> Option<Reenlightenment> {
    (control & REENLIGHTENMENT_ENABLED != 0).then_some(Reenlightenment {
        vector: (control & REENLIGHTENMENT_VECTOR_MASK) as u8,
        target_vp: (control >> 32) as u32,
    })
}

/// Why a saved state cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The VP count differs from the VM's.
    #[error("the saved user-backend state has {saved} VPs, the VM has {vm}")]
    VpCount {
        /// Saved.
        saved: usize,
        /// The VM's.
        vm: u32,
    },
    /// The clock does not fit the rate.
    #[error("the saved reference clock is invalid: {0}")]
    Clock(&'static str),
}

impl UserBackend {
    /// The backend's state now. Call it while the VM is paused.
    pub fn save(&self) -> UserBackendState {
        // Each lock in its own statement: a guard in a struct-literal field would live to the
        // end of the literal and deadlock with the next field's lock.
        let usage = self.report();
        let partition = self.partition().state();
        UserBackendState {
            tsc_hz: self.tsc_hz,
            clock: self.clock.map(|c| ClockState {
                scale: c.scale,
                offset: c.offset,
            }),
            partition,
            vps: self
                .vps
                .iter()
                .map(|vp| {
                    let vp = vp.lock().unwrap_or_else(|p| p.into_inner());
                    VpSnapshot {
                        assist_page: vp.assist_page,
                        synic: vp.synic.save(),
                        timers: vp.timers.iter().map(Stimer::save).collect(),
                    }
                })
                .collect(),
            usage: Some(usage),
            time_dilation: self.dilation,
        }
    }

    /// A backend continuing `state`. `p.guest_tsc` is the guest TSC now (read back after the
    /// vCPUs' TSC was restored) and `p.tsc_khz` the rate it runs at. Returns the interrupt to
    /// deliver when the guest must be reenlightened.
    pub fn restore(
        mut p: UserBackendParams<'_>,
        state: &UserBackendState,
        rate: RateChange,
    ) -> Result<(Self, Option<Reenlightenment>), RestoreError> {
        if state.vps.len() != p.vps as usize {
            return Err(RestoreError::VpCount {
                saved: state.vps.len(),
                vm: p.vps,
            });
        }
        let saved_clock = match state.clock {
            Some(c) => {
                if state.tsc_hz <= 10_000_000 {
                    return Err(RestoreError::Clock("a scale for a TSC at 10 MHz or less"));
                }
                Some(ReferenceClock {
                    tsc_hz: state.tsc_hz,
                    scale: c.scale,
                    offset: c.offset,
                })
            }
            None => None,
        };
        if !(1..=MAX_TIME_DILATION).contains(&state.time_dilation) {
            return Err(RestoreError::Clock(
                "a time dilation factor outside 1..=1000",
            ));
        }
        p.time_dilation = state.time_dilation;
        let new_hz = u64::from(p.tsc_khz) * 1000 * u64::from(p.time_dilation);
        let (tsc_hz, clock) = match rate {
            RateChange::Same => (state.tsc_hz, saved_clock),
            RateChange::Reenlighten => {
                let clock = match saved_clock {
                    Some(old) => rescale(&old, new_hz, p.guest_tsc),
                    None => ReferenceClock::new(new_hz, p.guest_tsc),
                };
                (new_hz, clock)
            }
        };
        let mut partition = Partition::from_state(&state.partition);
        let mut notify = None;
        if rate == RateChange::Reenlighten {
            if state.partition.tsc_emulation_control & 1 != 0 {
                partition.begin_tsc_emulation();
            }
            if let Some(gpa) = partition.tsc_page() {
                // In progress: invalid until the guest acknowledges; otherwise the new scale
                // right away.
                let publish = if partition.tsc_emulation_in_progress() {
                    None
                } else {
                    clock.as_ref()
                };
                let seq = clock::write_tsc_page(&p.mem, gpa, publish, partition.sequence());
                if let Ok(seq) = seq {
                    partition.set_sequence(seq);
                }
            }
            notify = reenlightenment(state.partition.reenlightenment_control);
        }
        let mut backend = UserBackend::new(p);
        backend.clock = clock;
        backend.tsc_hz = tsc_hz;
        backend.partition = Mutex::new(partition);
        for (slot, saved) in backend.vps.iter_mut().zip(&state.vps) {
            let vp = slot.get_mut().unwrap_or_else(|p| p.into_inner());
            vp.assist_page = saved.assist_page;
            vp.synic = Synic::from_state(&saved.synic);
            for (timer, t) in vp.timers.iter_mut().zip(&saved.timers) {
                *timer = Stimer::from_state(t);
            }
        }
        backend.history = state.usage.clone();
        Ok((backend, notify))
    }
}

/// `old` at a new TSC rate, reading the same reference time at guest TSC `at`.
fn rescale(old: &ReferenceClock, new_hz: u64, at: u64) -> Option<ReferenceClock> {
    let mut clock = ReferenceClock::new(new_hz, 0)?;
    let now = old.time_at(at);
    let scaled = ((u128::from(at) * u128::from(clock.scale)) >> 64) as u64;
    clock.offset = (now as i64).wrapping_sub(scaled as i64);
    Some(clock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hyperv::CrashAction;
    use crate::memory::{Bytes, GuestAddress};
    use crate::vcpu::msr::VcpuMsrHandler;
    use hyperv_tlfs::cpuid::{privilege, LEAF_FEATURES};
    use hyperv_tlfs::msr::*;
    use kvm_bindings::kvm_cpuid_entry2;
    use std::sync::Arc;

    const KHZ: u32 = 2_000_000;
    const ALL: u32 = privilege::REFERENCE_TSC
        | privilege::TIME_REF_COUNT
        | privilege::HYPERCALL_MSRS
        | privilege::VP_INDEX
        | privilege::APIC_MSRS
        | privilege::FREQUENCY_MSRS
        | privilege::REENLIGHTENMENT;

    fn leaf() -> [kvm_cpuid_entry2; 1] {
        [kvm_cpuid_entry2 {
            function: LEAF_FEATURES,
            eax: ALL,
            edx: hyperv_tlfs::cpuid::feature::FREQUENCIES,
            ..Default::default()
        }]
    }

    fn params<'a>(
        cpuid: &'a [kvm_cpuid_entry2],
        mem: &crate::memory::GuestMemory,
        khz: u32,
        tsc: u64,
    ) -> UserBackendParams<'a> {
        UserBackendParams {
            cpuid,
            offered_names: Vec::new(),
            vps: 2,
            mem: mem.clone(),
            guest_tsc: tsc,
            tsc_khz: khz,
            on_crash: CrashAction::Log,
            link: None,
            connections: Default::default(),
            time_dilation: 1,
        }
    }

    fn page_time(mem: &crate::memory::GuestMemory, tsc: u64) -> Option<u64> {
        let seq: u32 = mem.read_obj(GuestAddress(0x6000)).unwrap();
        let scale: u64 = mem.read_obj(GuestAddress(0x6008)).unwrap();
        let offset: i64 = mem.read_obj(GuestAddress(0x6010)).unwrap();
        (seq != 0).then(|| hyperv_tlfs::tsc_page::reference_time(tsc, scale, offset))
    }

    #[test]
    fn state_round_trips_and_time_continues() {
        let cpuid = leaf();
        let mem = crate::memory::allocate(16).unwrap();
        let b = Arc::new(UserBackend::new(params(&cpuid, &mem, KHZ, 1_000_000)));
        let mut vp = b.vp_handle(1);
        vp.write(GUEST_OS_ID, 0x8100_0006_0100_0000).unwrap();
        vp.write(REFERENCE_TSC, 0x6000 | 1).unwrap();
        vp.write(VP_ASSIST_PAGE, 0x7000 | 1).unwrap();
        let saved_at = 5_000_000_000u64;
        let before = b.reference_time(saved_at);
        let state = b.save();
        let json = serde_json::to_string(&state).unwrap();
        let back: UserBackendState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        // Restored later in wall time, but the guest TSC continues from where it was.
        let (r, notify) =
            UserBackend::restore(params(&cpuid, &mem, KHZ, saved_at), &back, RateChange::Same)
                .unwrap();
        assert_eq!(notify, None);
        assert_eq!(r.reference_time(saved_at), before);
        assert!(r.reference_time(saved_at + 1) >= before);
        assert_eq!(
            page_time(&mem, saved_at),
            Some(before),
            "page and MSR agree"
        );
        let mut rvp = Arc::new(r).vp_handle(1);
        assert_eq!(rvp.read(VP_ASSIST_PAGE), Ok(0x7000 | 1));
        assert_eq!(rvp.read(REFERENCE_TSC), Ok(0x6000 | 1));
        assert_eq!(rvp.read(GUEST_OS_ID), Ok(0x8100_0006_0100_0000));
    }

    #[test]
    fn a_new_tsc_rate_keeps_time_and_waits_for_the_guest() {
        let cpuid = leaf();
        let mem = crate::memory::allocate(16).unwrap();
        let b = Arc::new(UserBackend::new(params(&cpuid, &mem, KHZ, 0)));
        let mut vp = b.vp_handle(0);
        vp.write(REFERENCE_TSC, 0x6000 | 1).unwrap();
        vp.write(
            REENLIGHTENMENT_CONTROL,
            (1 << 32) | REENLIGHTENMENT_ENABLED | 0xec,
        )
        .unwrap();
        vp.write(TSC_EMULATION_CONTROL, 1).unwrap();
        let at = 7_000_000_000u64;
        let before = b.reference_time(at);
        let state = b.save();
        // Restored where the TSC runs at 3 GHz.
        let (r, notify) = UserBackend::restore(
            params(&cpuid, &mem, 3_000_000, at),
            &state,
            RateChange::Reenlighten,
        )
        .unwrap();
        assert_eq!(
            notify,
            Some(Reenlightenment {
                vector: 0xec,
                target_vp: 1
            })
        );
        let r = Arc::new(r);
        assert!(r.reference_time(at) >= before && r.reference_time(at) <= before + 1);
        // One second of the new TSC is one second of reference time.
        let second = r.reference_time(at + 3_000_000_000) - r.reference_time(at);
        assert!((9_999_990..=10_000_010).contains(&second), "{second}");
        assert_eq!(page_time(&mem, at), None, "invalid until acknowledged");
        let mut vp = r.vp_handle(0);
        assert_eq!(vp.read(TSC_EMULATION_STATUS), Ok(1));
        assert_eq!(vp.read(TSC_FREQUENCY), Ok(3_000_000_000));
        vp.write(TSC_EMULATION_STATUS, 0).unwrap();
        let t = at + 123_456_789;
        assert_eq!(
            page_time(&mem, t),
            Some(r.reference_time(t)),
            "published again"
        );
    }

    #[test]
    fn synic_and_timers_continue_after_a_restore() {
        let cpuid = [kvm_cpuid_entry2 {
            function: LEAF_FEATURES,
            eax: ALL | privilege::SYNIC | privilege::SYNTIMERS,
            edx: hyperv_tlfs::cpuid::feature::FREQUENCIES
                | hyperv_tlfs::cpuid::feature::DIRECT_SYNTHETIC_TIMERS,
            ..Default::default()
        }];
        let mem = crate::memory::allocate(16).unwrap();
        let b = Arc::new(UserBackend::new(params(&cpuid, &mem, KHZ, 0)));
        let mut vp = b.vp_handle(1);
        vp.write(SCONTROL, 1).unwrap();
        vp.write(SIMP, 0x8000 | 1).unwrap();
        vp.write(SINT0 + 2, 0x42).unwrap();
        // A one-shot direct-mode timer due 10 s of reference time from now, and a periodic one.
        let due = b.now() + 100_000_000;
        vp.write(STIMER0_CONFIG, (0xec << 4) | (1 << 12) | 1)
            .unwrap();
        vp.write(STIMER0_COUNT, due).unwrap();
        vp.write(STIMER0_CONFIG + 2, (2 << 16) | 0b11).unwrap();
        vp.write(STIMER0_COUNT + 2, 50_000).unwrap();
        let state = b.save();
        b.shutdown();
        let json = serde_json::to_string(&state).unwrap();
        let back: UserBackendState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        let saved_tsc = b.guest_tsc();
        let (r, _) = UserBackend::restore(
            params(&cpuid, &mem, KHZ, saved_tsc),
            &back,
            RateChange::Same,
        )
        .unwrap();
        let r = Arc::new(r);
        let mut rvp = r.vp_handle(1);
        assert_eq!(rvp.read(SCONTROL), Ok(1));
        assert_eq!(rvp.read(SIMP), Ok(0x8000 | 1));
        assert_eq!(rvp.read(SINT0 + 2), Ok(0x42));
        assert_eq!(rvp.read(STIMER0_COUNT), Ok(due));
        assert_eq!(rvp.read(STIMER0_CONFIG + 2), Ok((2 << 16) | 0b11));
        let timers = r.vp(1).unwrap().timers;
        assert_eq!(
            timers[0].deadline(),
            Some(due),
            "still due at the same reference time"
        );
        let periodic = timers[1].deadline().expect("the periodic timer is armed");
        assert!(periodic > r.now().saturating_sub(50_000), "{periodic}");
        // A VP nobody touched keeps its reset SINTs.
        assert_eq!(
            r.vp_handle(0).read(SINT0),
            Ok(hyperv_tlfs::synic::SINT_RESET_VALUE)
        );
        r.shutdown();
    }

    #[test]
    fn an_older_snapshot_without_synic_state_restores_with_reset_values() {
        let cpuid = leaf();
        let mem = crate::memory::allocate(16).unwrap();
        let b = UserBackend::new(params(&cpuid, &mem, KHZ, 0));
        let mut json: serde_json::Value = serde_json::to_value(b.save()).unwrap();
        for vp in json["vps"].as_array_mut().unwrap() {
            vp.as_object_mut()
                .unwrap()
                .retain(|k, _| k == "assist_page");
        }
        json.as_object_mut().unwrap().remove("time_dilation");
        let old: UserBackendState = serde_json::from_value(json).unwrap();
        assert_eq!(old.time_dilation, 1);
        let (r, _) =
            UserBackend::restore(params(&cpuid, &mem, KHZ, 0), &old, RateChange::Same).unwrap();
        assert_eq!(
            r.vp(0).unwrap().synic.read(SINT0),
            Ok(hyperv_tlfs::synic::SINT_RESET_VALUE)
        );
    }

    #[test]
    fn an_absurd_dilation_factor_is_refused() {
        let cpuid = leaf();
        let mem = crate::memory::allocate(16).unwrap();
        let mut state = UserBackend::new(params(&cpuid, &mem, KHZ, 0)).save();
        for bad in [0, 1001, u32::MAX] {
            state.time_dilation = bad;
            assert!(matches!(
                UserBackend::restore(params(&cpuid, &mem, KHZ, 0), &state, RateChange::Same),
                Err(RestoreError::Clock(_))
            ));
        }
    }

    #[test]
    fn a_state_for_another_vp_count_is_refused() {
        let cpuid = leaf();
        let mem = crate::memory::allocate(16).unwrap();
        let b = UserBackend::new(params(&cpuid, &mem, KHZ, 0));
        let mut state = b.save();
        state.vps.pop();
        assert!(matches!(
            UserBackend::restore(params(&cpuid, &mem, KHZ, 0), &state, RateChange::Same),
            Err(RestoreError::VpCount { saved: 1, vm: 2 })
        ));
    }
}
