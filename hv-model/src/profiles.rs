//! Starting points a user can pick with `--profile` and adjust with `--hv`. Every flag a profile
//! turns on is on "where possible": if the host or backend cannot provide it, it is off with
//! the reason, instead of failing (explicit `--hv` flags fail instead).
//!
//! Layer 5: depends on [`crate::backend`], [`crate::config`], [`crate::error`],
//! [`crate::flags`], [`crate::host`], [`crate::options`], [`crate::tlfs`].

use std::fmt;

use serde::Serialize;

use crate::backend::{availability, Backend};
use crate::config::{Coresharing, FlagValue, HvConfig};
use crate::error::ModelError;
use crate::flags::{Enlightenment as E, Enlightenment, FlagKind, FLAGS};
use crate::host::HostCapabilities;
use crate::options::{HostChecks, Irqchip, ResolveOptions};
use crate::tlfs::{self, Reg};

/// A named starting set of enlightenments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Windows as an L1 Hyper-V host (Hyper-V role, WSL2, VBS/HVCI/Credential Guard): the
    /// `windows` set plus everything nesting needs (stimer-direct, eVMCS where the host is
    /// Intel with nested=1, enlightened MSR bitmap, direct TLB flush, reenlightenment).
    WindowsServerHyperv,
    /// Windows desktop/server without nesting: the QEMU-recommended set minus nested-only,
    /// debug and migration-hostile flags.
    Windows,
    /// What Linux's Hyper-V guest code (arch/x86/hyperv, drivers/hv) uses, with KVM's own
    /// leaves hidden (`kvm=off`) so that Linux really runs as a Hyper-V guest.
    Linux,
    /// The `windows` set restricted to what migrates between KVM hosts: no host-dependent
    /// hints, KVM paravirt features listed explicitly, and migration blockers are errors.
    Migratable,
    /// Smallest useful set: relaxed timing, PV EOI, reference TSC page, enforced CPUID.
    Minimal,
    /// Everything this host can do, listed explicitly (needs `--host`). Not migratable.
    Host,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 6] = [
        Profile::WindowsServerHyperv,
        Profile::Windows,
        Profile::Linux,
        Profile::Migratable,
        Profile::Minimal,
        Profile::Host,
    ];

    /// The profile's name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::WindowsServerHyperv => "windows-server-hyperv",
            Profile::Windows => "windows",
            Profile::Linux => "linux",
            Profile::Migratable => "migratable",
            Profile::Minimal => "minimal",
            Profile::Host => "host",
        }
    }

    /// Looks a profile up by name (case-insensitive, `_` or `-`).
    pub fn from_name(name: &str) -> Result<Profile, ModelError> {
        let key = name.trim().to_ascii_lowercase().replace('_', "-");
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == key)
            .ok_or_else(|| ModelError::UnknownProfile {
                name: name.trim().to_string(),
                known: Profile::ALL.map(Profile::name).join(", "),
            })
    }

    /// One-line description.
    pub fn description(self) -> &'static str {
        match self {
            Profile::WindowsServerHyperv => {
                "Windows as L1 Hyper-V host (Hyper-V role, WSL2, VBS/HVCI): windows + nesting"
            }
            Profile::Windows => "Windows desktop/server without nesting",
            Profile::Linux => "Linux guest: what its Hyper-V code uses, KVM's leaves hidden",
            Profile::Migratable => "windows restricted to what migrates between KVM hosts",
            Profile::Minimal => "relaxed, vapic, time, enforce-cpuid",
            Profile::Host => "everything this host can do, listed explicitly (needs --host)",
        }
    }

    /// Why this profile turns `flag` off, where the profile's purpose is the reason.
    pub fn why_off(self, flag: Enlightenment) -> Option<&'static str> {
        match (self, flag) {
            (Profile::Linux, E::Kvm) => Some(
                "Linux runs as the guest of the hypervisor whose detection ranks highest, and \
                 KVM's signature (moved to 0x40000100) outranks Hyper-V's: with KVM's leaves \
                 present Linux would run as a KVM guest and none of its Hyper-V code would run",
            ),
            _ => None,
        }
    }

    /// Whether this profile requires a migratable result (blockers become errors).
    pub fn requires_migration(self) -> bool {
        self == Profile::Migratable
    }

    /// The flags this profile turns on (and, for `migratable`, the ones it pins off).
    /// `host` expands against the host and fails without one.
    pub fn config(
        self,
        host: &HostCapabilities,
        backend: Backend,
        opts: &ResolveOptions,
    ) -> Result<HvConfig, ModelError> {
        let mut c = HvConfig::new();
        let on = |c: &mut HvConfig, flags: &[Enlightenment]| -> Result<(), ModelError> {
            flags.iter().try_for_each(|f| c.enable(*f))
        };
        match self {
            Profile::Minimal => on(&mut c, &[E::Relaxed, E::Vapic, E::Time, E::EnforceCpuid])?,
            Profile::Windows => windows(&mut c)?,
            Profile::WindowsServerHyperv => {
                windows(&mut c)?;
                on(&mut c, NESTED)?;
            }
            Profile::Linux => {
                on(&mut c, LINUX)?;
                c.disable(E::Kvm);
            }
            Profile::Migratable => {
                windows(&mut c)?;
                c.forget(E::Avic);
                c.set_value(
                    E::NoNonarchCoresharing,
                    FlagValue::Coresharing(Coresharing::Off),
                )?;
                for d in FLAGS.iter().filter(|d| d.kind == FlagKind::KvmParavirt) {
                    if d.flag == E::Kvm {
                        continue;
                    }
                    if KVM_PV_COMMON.contains(&d.flag) {
                        c.enable(d.flag)?;
                    } else {
                        c.disable(d.flag);
                    }
                }
            }
            Profile::Host => host_profile(&mut c, host, backend, opts)?,
        }
        Ok(c)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Spinlock retries the profiles use: notify after 8191 spins (Proxmox's 0x1fff, libvirt's
/// and KubeVirt's common 8191), a middle ground for hosts that may be overcommitted.
pub const PROFILE_SPINLOCKS: u32 = 0x1FFF;

const WINDOWS: &[Enlightenment] = &[
    E::Relaxed,
    E::Vapic,
    E::Vpindex,
    E::Runtime,
    E::Time,
    E::Synic,
    E::Stimer,
    E::StimerDirect,
    E::Frequencies,
    E::Tlbflush,
    E::TlbflushExt,
    E::Ipi,
    E::XmmInput,
    E::Avic,
    E::EnforceCpuid,
];

/// What an L1 Hyper-V adds (QEMU hyperv.rst: nested-specific flags).
const NESTED: &[Enlightenment] = &[
    E::Evmcs,
    E::EmsrBitmap,
    E::TlbflushDirect,
    E::Reenlightenment,
];

/// Bits Linux's Hyper-V guest code checks: VP index, reference TSC and counter, SynIC and
/// (direct) stimers for clockevents, APIC MSRs/VP assist, frequency MSRs for calibration,
/// PV TLB flush (incl. extended ranges), cluster IPI, and deprecated AutoEOI.
const LINUX: &[Enlightenment] = &[
    E::Vpindex,
    E::Time,
    E::Synic,
    E::Stimer,
    E::StimerDirect,
    E::Vapic,
    E::Frequencies,
    E::Tlbflush,
    E::TlbflushExt,
    E::Ipi,
    E::Avic,
    E::EnforceCpuid,
];

/// KVM paravirt features every KVM since ≈5.8 offers (asyncpf-int is the newest).
const KVM_PV_COMMON: &[Enlightenment] = &[
    E::KvmClock,
    E::KvmClockStableBit,
    E::KvmNopiodelay,
    E::KvmAsyncpf,
    E::KvmAsyncpfInt,
    E::KvmStealTime,
    E::KvmPvEoi,
    E::KvmPvUnhalt,
    E::KvmPvTlbFlush,
    E::KvmPvIpi,
    E::KvmPollControl,
    E::KvmPvSchedYield,
];

fn windows(c: &mut HvConfig) -> Result<(), ModelError> {
    WINDOWS.iter().try_for_each(|f| c.enable(*f))?;
    c.set_value(E::Spinlocks, FlagValue::Retries(PROFILE_SPINLOCKS))
}

/// Everything hvkvm knows, on "where possible", so that resolution keeps exactly what this host
/// and backend can do and says why the rest is off. Never automatic: hv-syndbg (can stop Windows
/// booting without a VMBus bridge), hv-passthrough itself, kvm-hint-dedicated (only true with
/// dedicated pCPUs). The coresharing hint is on only where the host has no SMT.
fn host_profile(
    c: &mut HvConfig,
    host: &HostCapabilities,
    backend: Backend,
    opts: &ResolveOptions,
) -> Result<(), ModelError> {
    if opts.host_checks != HostChecks::Enforce {
        return Err(ModelError::HostRequired {
            what: "profile 'host'".into(),
        });
    }
    for d in FLAGS {
        let never = matches!(d.flag, E::Syndbg | E::Passthrough | E::Kvm | E::KvmHintDedicated)
            // Depends on the VM's irqchip, not on the host.
            || (d.flag == E::KvmMsiExtDestId && opts.irqchip != Irqchip::Split);
        if never || d.kind == FlagKind::Identity || d.value != crate::flags::ValueKind::Switch {
            continue;
        }
        c.enable(d.flag)?;
    }
    let reported = host
        .hv_leaf(tlfs::HV_RECOMMENDATIONS, Reg::Ebx)
        .unwrap_or(0);
    let retries = if (tlfs::SPINLOCKS_MIN..tlfs::SPINLOCKS_NEVER_NOTIFY).contains(&reported) {
        reported
    } else {
        PROFILE_SPINLOCKS
    };
    c.set_value(E::Spinlocks, FlagValue::Retries(retries))?;
    // SMT impossible on this host: the coresharing hint is true here (KVM reports 04.EAX[18]).
    let no_smt = host.smt_possible == Some(false)
        || host
            .hv_leaf(tlfs::HV_RECOMMENDATIONS, Reg::Eax)
            .unwrap_or(0)
            & tlfs::HV_NO_NONARCH_CORESHARING
            != 0;
    if no_smt && availability(E::NoNonarchCoresharing, host, backend, opts).is_ok() {
        c.set_value(
            E::NoNonarchCoresharing,
            FlagValue::Coresharing(Coresharing::On),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(Profile::from_name(p.name()).unwrap(), p);
        }
        assert_eq!(
            Profile::from_name("Windows_Server_HyperV").unwrap(),
            Profile::WindowsServerHyperv
        );
        let err = Profile::from_name("win").unwrap_err().to_string();
        assert!(err.contains("windows-server-hyperv"), "{err}");
    }

    #[test]
    fn static_profiles_are_dependency_closed() {
        let host = HostCapabilities::default();
        let opts = ResolveOptions {
            host_checks: HostChecks::Skip,
            ..ResolveOptions::default()
        };
        for p in Profile::ALL.into_iter().filter(|p| *p != Profile::Host) {
            let c = p.config(&host, Backend::Kernel, &opts).unwrap();
            for f in c.enabled() {
                // `kvm` is on by default, so KVM paravirt features need not list it.
                for dep in f.def().requires.iter().filter(|d| **d != E::Kvm) {
                    assert_eq!(c.state(*dep), Some(true), "{p}: {f} needs {dep}");
                }
            }
        }
    }
}
