//! Fleet baseline: the enlightenment set that every host offers and that survives migration
//! between them, with the reason each other flag was left out. A libvirt or KubeVirt fleet runs
//! `hvkvm probe --json` on every node and `hvkvm hv baseline` on the results.

use serde::Serialize;

use crate::backend::Backend;
use crate::config::{FlagValue, HvConfig};
use crate::error::ModelError;
use crate::flags::{Enlightenment as E, Enlightenment, FlagKind};
use crate::host::HostCapabilities;
use crate::profiles::Profile;
use crate::request::HvRequest;
use crate::resolve::{resolve, Resolution, ResolveOptions};

/// One host of the fleet.
#[derive(Debug, Clone)]
pub struct FleetHost {
    /// Name used in reasons (e.g. the probe file name).
    pub name: String,
    /// What it can do.
    pub host: HostCapabilities,
}

/// Why a flag is not in the baseline, per host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exclusion {
    /// The flag.
    pub flag: Enlightenment,
    /// `(host, reason)` for each host where it is off.
    pub hosts: Vec<(String, String)>,
}

/// The fleet baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Baseline {
    /// Host names, in input order.
    pub hosts: Vec<String>,
    /// The safe set as explicit settings (use it unchanged on every host).
    pub config: HvConfig,
    /// Flags requested (or offered by some host) but left out, with reasons.
    pub excluded: Vec<Exclusion>,
    /// How values were chosen (TSC frequency, spinlocks).
    pub notes: Vec<String>,
}

/// Why no baseline could be computed.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// No hosts.
    #[error("a baseline needs at least one host description (hvkvm probe --json on each host)")]
    NoHosts,
    /// The request fails on one host (an explicit flag it cannot provide, a bad dependency).
    #[error("the request cannot be met on host {host}")]
    Host {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: ModelError,
    },
}

/// Computes the baseline for `request` (default: profile `host`, i.e. everything every host can
/// do) over `hosts`. Migration between the hosts is always required.
pub fn baseline(
    hosts: &[FleetHost],
    request: &HvRequest,
    backend: Backend,
    opts: &ResolveOptions,
) -> Result<Baseline, BaselineError> {
    if hosts.is_empty() {
        return Err(BaselineError::NoHosts);
    }
    let request = if request.is_empty() {
        HvRequest::from_profile(Profile::Host)
    } else {
        request.clone()
    };
    let mut notes = Vec::new();
    let mut opts = ResolveOptions {
        require_migration: true,
        ..opts.clone()
    };
    if request.overrides.tsc_frequency_hz.is_none() && opts.tsc_khz.is_none() {
        opts.tsc_khz = fleet_tsc_khz(hosts, &mut notes);
    }
    let resolutions: Vec<Resolution> = hosts
        .iter()
        .map(|h| {
            resolve(&request, &h.host, backend, &opts).map_err(|source| BaselineError::Host {
                host: h.name.clone(),
                source,
            })
        })
        .collect::<Result<_, _>>()?;

    let on_everywhere = |f: Enlightenment| resolutions.iter().all(|r| r.is_on(f));
    let mut config = HvConfig::new();
    let first = &resolutions[0].config;
    for flag in Enlightenment::all().filter(|f| *f != E::Passthrough) {
        let kind = flag.kind();
        if on_everywhere(flag) {
            if flag == E::Spinlocks {
                let retries = resolutions
                    .iter()
                    .map(|r| r.guest.spinlock_retries)
                    .min()
                    .unwrap_or(0x1FFF);
                set(&mut config, flag, FlagValue::Retries(retries));
            } else if let Some(v) = first.value(flag) {
                let same = resolutions.iter().all(|r| r.config.value(flag) == Some(v));
                if same {
                    set(&mut config, flag, v.clone());
                } else {
                    notes.push(format!(
                        "{flag}: hosts disagree on the value; left at the default"
                    ));
                }
            } else if flag != E::Kvm {
                // Pinned on, so that every host offers it even where it is only a default.
                let _ = config.enable(flag);
            }
        } else if kind == FlagKind::KvmParavirt && flag != E::KvmHintDedicated {
            // Pin it off so no host adds it by default.
            config.disable(flag);
        }
    }
    let reenlightenment = config.state(E::Reenlightenment) == Some(true);
    if let (true, Some(hz)) = (reenlightenment, resolutions[0].guest.tsc_frequency_hz) {
        let _ = config.set_tsc_frequency(hz);
    }

    let excluded = exclusions(hosts, &resolutions);
    // The intersection of dependency-closed sets is closed; check it anyway on every host.
    let check = HvRequest::from_config(config.clone());
    for h in hosts {
        resolve(&check, &h.host, backend, &opts).map_err(|source| BaselineError::Host {
            host: h.name.clone(),
            source,
        })?;
    }
    Ok(Baseline {
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
        config,
        excluded,
        notes,
    })
}

fn set(config: &mut HvConfig, flag: Enlightenment, value: FlagValue) {
    // Values come from resolutions that already validated them.
    let _ = config.set_value(flag, value);
}

/// A TSC frequency every host can give a guest: the lowest host frequency, if every other host
/// runs at it or has TSC scaling. KVM does not emulate the TSC after migration, so a
/// reenlightened guest needs this (reference §1, hv-reenlightenment).
fn fleet_tsc_khz(hosts: &[FleetHost], notes: &mut Vec<String>) -> Option<u32> {
    let known: Vec<u32> = hosts.iter().filter_map(|h| h.host.tsc_khz).collect();
    let Some(&lowest) = known.iter().min() else {
        notes.push("no host reports its TSC frequency: hv-reenlightenment cannot migrate".into());
        return None;
    };
    let unable: Vec<&str> = hosts
        .iter()
        .filter(|h| h.host.tsc_khz != Some(lowest) && !h.host.tsc_control)
        .map(|h| h.name.as_str())
        .collect();
    if unable.is_empty() {
        notes.push(format!(
            "tsc-frequency={}: the lowest host TSC; every other host has TSC scaling",
            u64::from(lowest) * 1000
        ));
        Some(lowest)
    } else {
        notes.push(format!(
            "no common TSC frequency: {} cannot run a guest at {lowest} kHz (different TSC and \
             no TSC scaling), so hv-reenlightenment cannot migrate",
            unable.join(", ")
        ));
        None
    }
}

fn exclusions(hosts: &[FleetHost], resolutions: &[Resolution]) -> Vec<Exclusion> {
    let mut out = Vec::new();
    for flag in Enlightenment::all() {
        let wanted = resolutions.iter().any(|r| r.decision(flag).requested);
        let everywhere = resolutions.iter().all(|r| r.is_on(flag));
        if !wanted || everywhere || flag.kind() == FlagKind::Identity {
            continue;
        }
        let reasons = hosts
            .iter()
            .zip(resolutions)
            .filter(|(_, r)| !r.is_on(flag))
            .map(|(h, r)| (h.name.clone(), r.decision(flag).reason.clone()))
            .collect();
        out.push(Exclusion {
            flag,
            hosts: reasons,
        });
    }
    out
}
