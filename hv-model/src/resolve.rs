//! Host-aware resolution: a request (profile + explicit flags) plus a host and a backend give a
//! decision per flag (on/off and why), migration blockers, warnings, the values the guest sees,
//! and the final explicit set.
//!
//! Rules, in order:
//! 1. explicit `--hv` settings override the profile; flags nobody mentions keep their default
//!    (Hyper-V flags off; `kvm` and KVM paravirt features on where the host has them, as
//!    QEMU's `-cpu host`);
//! 2. `hv-passthrough` turns on everything the host reports (except hv-syndbg and flags turned
//!    off explicitly), as QEMU, but lists what it turned on;
//! 3. dependencies QEMU enforces: a missing dependency of an explicit flag is an error naming
//!    it; a profile/default flag whose dependency is off goes off too;
//! 4. availability on the host and backend: explicit → error, profile/default → off with reason;
//! 5. migration: blockers are listed; when migration is required they are errors for explicit
//!    flags and turn profile flags off.
//!
//! Layer 7: the decision data lives in [`crate::decision`] and the options in
//! [`crate::options`] (both re-exported here), so that the modules this one calls need not
//! import it.

use serde::Serialize;

use crate::advice;
use crate::backend::{availability, Backend};
use crate::config::{Coresharing, FlagValue, HvConfig, VendorId};
use crate::error::{and_list, ModelError};
use crate::flags::{Enlightenment as E, Enlightenment, FlagKind};
use crate::host::HostCapabilities;
use crate::migration;
use crate::profiles::Profile;
use crate::request::HvRequest;
use crate::tlfs::{self, KvmCap, Reg};

pub(crate) use crate::decision::Slot;
pub use crate::decision::{Decision, GuestSettings, HvVersion, MigrationBlocker, Origin};
pub use crate::options::{HostChecks, Irqchip, ResolveOptions};

/// The outcome of [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// Backend resolved for.
    pub backend: Backend,
    /// Profile of the request.
    pub profile: Option<Profile>,
    /// Whether the host was checked.
    pub host_checked: bool,
    /// One decision per flag, in table order.
    pub decisions: Vec<Decision>,
    /// Why this guest cannot be live-migrated (empty: it can).
    pub migration_blockers: Vec<MigrationBlocker>,
    /// Advice that does not stop the guest.
    pub warnings: Vec<String>,
    /// Values for CPUID and VMM setup.
    pub guest: GuestSettings,
    /// The final set as explicit settings: `--hv` this and no profile to get the same guest.
    pub config: HvConfig,
}

impl Resolution {
    /// The decision for a flag.
    pub fn decision(&self, flag: Enlightenment) -> &Decision {
        &self.decisions[flag as usize]
    }

    /// Whether a flag is on.
    pub fn is_on(&self, flag: Enlightenment) -> bool {
        self.decision(flag).on
    }

    /// Flags that are on, in table order.
    pub fn enabled(&self) -> Vec<Enlightenment> {
        self.decisions
            .iter()
            .filter(|d| d.on)
            .map(|d| d.flag)
            .collect()
    }

    /// Whether the guest sees Hyper-V at all (QEMU's `hyperv_enabled()`).
    pub fn hyperv_enabled(&self) -> bool {
        self.decisions
            .iter()
            .any(|d| d.on && d.flag.def().enables_hyperv)
    }

    /// Whether nothing blocks live migration.
    pub fn migratable(&self) -> bool {
        self.migration_blockers.is_empty()
    }

    /// Per-vCPU capabilities the VMM must enable (SYNIC2, ENLIGHTENED_VMCS, ENFORCE_CPUID).
    pub fn kvm_caps_to_enable(&self) -> Vec<KvmCap> {
        if self.backend != Backend::Kernel || !self.hyperv_enabled() {
            return Vec::new();
        }
        self.decisions
            .iter()
            .filter(|d| d.on)
            .filter_map(|d| d.flag.def().enable_cap)
            .collect()
    }
}

/// Resolves a request against a host and backend. Errors are dependency and value problems,
/// and explicit flags the host/backend cannot provide.
pub fn resolve(
    request: &HvRequest,
    host: &HostCapabilities,
    backend: Backend,
    opts: &ResolveOptions,
) -> Result<Resolution, ModelError> {
    let checked = opts.host_checks == HostChecks::Enforce;
    let profile_cfg = match request.profile {
        Some(p) => p.config(host, backend, opts)?,
        None => HvConfig::new(),
    };
    let mut wanted = profile_cfg.clone();
    wanted.merge(&request.overrides);
    let tsc_frequency_hz = tsc_frequency(&wanted, opts)?;
    let require_migration =
        opts.require_migration || request.profile.is_some_and(Profile::requires_migration);

    let mut slots: Vec<Slot> = Enlightenment::all()
        .map(|f| initial_slot(f, request, &profile_cfg))
        .collect();
    let passthrough_host =
        expand_passthrough(&mut slots, &mut wanted, request, host, backend, opts)?;
    enforce_dependencies(&mut slots)?;
    check_availability(&mut slots, host, backend, opts)?;
    hide_kvm_features(&mut slots);
    advice::gate_soft_flags(&mut slots, host, checked);
    enforce_dependencies(&mut slots)?;

    let mut blockers = migration::blockers(&slots, &wanted, tsc_frequency_hz, host, checked);
    if require_migration {
        for b in &blockers {
            let slot = &mut slots[b.flag as usize];
            if slot.origin == Origin::Explicit {
                return Err(ModelError::MigrationBlocked {
                    flag: b.flag,
                    reason: b.reason.clone(),
                });
            }
            slot.on = false;
            slot.reason = format!("off because the guest must be migratable: {}", b.reason);
        }
        enforce_dependencies(&mut slots)?;
        blockers = migration::blockers(&slots, &wanted, tsc_frequency_hz, host, checked);
    }

    let guest = guest_settings(
        &slots,
        &wanted,
        passthrough_host,
        host,
        backend,
        opts,
        tsc_frequency_hz,
    );
    let warnings = advice::warnings(&slots, &wanted, &guest, host, backend, request, opts);
    let config = final_config(&slots, &wanted, &guest)?;
    let hyperv = Enlightenment::all()
        .zip(&slots)
        .any(|(f, s)| s.on && f.def().enables_hyperv);
    let decisions = decisions(slots, &wanted, &guest, hyperv);
    Ok(Resolution {
        backend,
        profile: request.profile,
        host_checked: checked,
        decisions,
        migration_blockers: blockers,
        warnings,
        guest,
        config,
    })
}

fn tsc_frequency(wanted: &HvConfig, opts: &ResolveOptions) -> Result<Option<u64>, ModelError> {
    let from_opts = opts.tsc_khz.map(|k| u64::from(k) * 1000);
    match (wanted.tsc_frequency_hz, from_opts) {
        (Some(a), Some(b)) if a != b => Err(ModelError::ConflictingTsc {
            first: a,
            second: b,
        }),
        (a, b) => Ok(a.or(b)),
    }
}

fn initial_slot(flag: Enlightenment, request: &HvRequest, profile_cfg: &HvConfig) -> Slot {
    if let Some(on) = request.overrides.state(flag) {
        let reason = if on {
            "requested"
        } else {
            "turned off by the request"
        };
        return Slot {
            on,
            requested: on,
            origin: Origin::Explicit,
            reason: reason.into(),
        };
    }
    if let (Some(on), Some(p)) = (profile_cfg.state(flag), request.profile) {
        let reason = match (on, p.why_off(flag)) {
            (true, _) => format!("profile {p}"),
            (false, Some(why)) => format!("profile {p} turns it off: {why}"),
            (false, None) => format!("profile {p} turns it off"),
        };
        return Slot {
            on,
            requested: on,
            origin: Origin::Profile,
            reason,
        };
    }
    let default_on = flag.kind() == FlagKind::KvmParavirt && flag != E::KvmHintDedicated;
    if default_on {
        let reason = if flag == E::Kvm {
            "default (QEMU kvm=on)".to_string()
        } else {
            "default, as QEMU -cpu host: on where the host offers it".to_string()
        };
        return Slot {
            on: true,
            requested: true,
            origin: Origin::Default,
            reason,
        };
    }
    let reason = match (request.profile, flag) {
        (_, E::KvmHintDedicated) => "not requested (only true with dedicated, pinned pCPUs)".into(),
        (Some(p), _) => format!("not in profile {p}"),
        (None, _) => "not requested".into(),
    };
    Slot {
        on: false,
        requested: false,
        origin: Origin::NotRequested,
        reason,
    }
}

/// hv-passthrough: every Hyper-V flag the host reports, except skip_passthrough ones and flags
/// the request turns off explicitly. Returns whether host values (vendor, version, limits,
/// spinlocks) must be copied, as QEMU does.
fn expand_passthrough(
    slots: &mut [Slot],
    wanted: &mut HvConfig,
    request: &HvRequest,
    host: &HostCapabilities,
    backend: Backend,
    opts: &ResolveOptions,
) -> Result<bool, ModelError> {
    let pt = &slots[E::Passthrough as usize];
    if !pt.on {
        return Ok(false);
    }
    if opts.host_checks != HostChecks::Enforce {
        if pt.origin == Origin::Explicit {
            return Err(ModelError::HostRequired {
                what: "hv-passthrough".into(),
            });
        }
        slots[E::Passthrough as usize].on = false;
        slots[E::Passthrough as usize].reason += ", but it needs a host description (--host)";
        return Ok(false);
    }
    if let Err(why) = availability(E::Passthrough, host, backend, opts) {
        if pt.origin == Origin::Explicit {
            return Err(ModelError::Unavailable {
                flag: E::Passthrough,
                backend,
                reason: why,
            });
        }
        slots[E::Passthrough as usize].on = false;
        slots[E::Passthrough as usize].reason += &format!(", but {why}");
        return Ok(false);
    }
    for flag in Enlightenment::all() {
        let def = flag.def();
        let eligible = def.kind == FlagKind::Enlightenment
            && !def.skip_passthrough
            && flag != E::NoNonarchCoresharing
            && request.overrides.state(flag).is_none();
        if !eligible {
            continue;
        }
        let slot = &mut slots[flag as usize];
        match availability(flag, host, backend, opts) {
            Ok(note) => {
                *slot = Slot {
                    on: true,
                    requested: true,
                    origin: Origin::Passthrough,
                    reason: format!("hv-passthrough: {note}"),
                }
            }
            Err(why) => {
                *slot = Slot {
                    on: false,
                    requested: true,
                    origin: Origin::Passthrough,
                    reason: format!("hv-passthrough: {why}"),
                }
            }
        }
    }
    if request.overrides.state(E::Spinlocks).is_none() {
        let reported = host
            .hv_leaf(tlfs::HV_RECOMMENDATIONS, Reg::Ebx)
            .unwrap_or(0);
        if reported >= tlfs::SPINLOCKS_MIN && reported != tlfs::SPINLOCKS_NEVER_NOTIFY {
            wanted.set_value(E::Spinlocks, FlagValue::Retries(reported))?;
        } else {
            slots[E::Spinlocks as usize].on = false;
            slots[E::Spinlocks as usize].reason =
                format!("hv-passthrough: KVM reports 04.EBX={reported:#x}");
        }
    }
    Ok(true)
}

/// Applies the dependency rules until nothing changes.
pub(crate) fn enforce_dependencies(slots: &mut [Slot]) -> Result<(), ModelError> {
    loop {
        let mut changed = false;
        for flag in Enlightenment::all() {
            if !slots[flag as usize].on {
                continue;
            }
            let missing: Vec<Enlightenment> = flag
                .def()
                .requires
                .iter()
                .copied()
                .filter(|d| !slots[*d as usize].on)
                .collect();
            if missing.is_empty() {
                continue;
            }
            if slots[flag as usize].origin == Origin::Explicit {
                return Err(dependency_error(flag, &missing, slots));
            }
            let slot = &mut slots[flag as usize];
            slot.on = false;
            let verb = if missing.len() == 1 { "is" } else { "are" };
            slot.reason = format!(
                "{}, but it needs {} which {verb} off",
                slot.reason,
                and_list(&missing)
            );
            changed = true;
        }
        if !changed {
            return Ok(());
        }
    }
}

fn dependency_error(flag: Enlightenment, missing: &[Enlightenment], slots: &[Slot]) -> ModelError {
    for dep in missing {
        let s = &slots[*dep as usize];
        match s.origin {
            Origin::Explicit => {
                return ModelError::DependencyDisabled {
                    flag,
                    dependency: *dep,
                }
            }
            origin if origin.is_soft() => {
                return ModelError::DependencyUnavailable {
                    flag,
                    dependency: *dep,
                    reason: s.reason.clone(),
                }
            }
            _ => {}
        }
    }
    ModelError::MissingDependency {
        flag,
        missing: missing.to_vec(),
    }
}

fn check_availability(
    slots: &mut [Slot],
    host: &HostCapabilities,
    backend: Backend,
    opts: &ResolveOptions,
) -> Result<(), ModelError> {
    for flag in Enlightenment::all() {
        let slot = &mut slots[flag as usize];
        if !slot.on || slot.origin == Origin::Passthrough || flag == E::Passthrough {
            continue;
        }
        match availability(flag, host, backend, opts) {
            Ok(note) => slot.reason = format!("{}; {note}", slot.reason),
            Err(reason) if slot.origin == Origin::Explicit => {
                return Err(ModelError::Unavailable {
                    flag,
                    backend,
                    reason,
                })
            }
            Err(reason) => {
                slot.on = false;
                slot.reason = format!("{}, but {reason}", slot.reason);
            }
        }
    }
    Ok(())
}

/// With `kvm=off` KVM's leaves are hidden, so its paravirt features cannot take effect; QEMU
/// accepts such a command line, so this is not an error.
fn hide_kvm_features(slots: &mut [Slot]) {
    if slots[E::Kvm as usize].on {
        return;
    }
    for flag in Enlightenment::all().filter(|f| f.kind() == FlagKind::KvmParavirt && *f != E::Kvm) {
        let slot = &mut slots[flag as usize];
        if slot.on {
            slot.on = false;
            slot.reason += ", but kvm=off hides KVM's leaves, so it has no effect";
        }
    }
}

fn guest_settings(
    slots: &[Slot],
    wanted: &HvConfig,
    passthrough: bool,
    host: &HostCapabilities,
    backend: Backend,
    opts: &ResolveOptions,
    tsc_frequency_hz: Option<u64>,
) -> GuestSettings {
    let on = |f: Enlightenment| slots[f as usize].on;
    let host_reg = |leaf, reg| {
        if passthrough {
            host.hv_leaf(leaf, reg)
        } else {
            None
        }
    };
    let vendor = match wanted.vendor_id() {
        Some(v) => v.to_string(),
        None => match (host_reg(tlfs::HV_VENDOR_AND_MAX, Reg::Ebx), passthrough) {
            (Some(_), true) => tlfs::unpack_signature([
                host.hv_leaf(tlfs::HV_VENDOR_AND_MAX, Reg::Ebx).unwrap_or(0),
                host.hv_leaf(tlfs::HV_VENDOR_AND_MAX, Reg::Ecx).unwrap_or(0),
                host.hv_leaf(tlfs::HV_VENDOR_AND_MAX, Reg::Edx).unwrap_or(0),
            ]),
            _ => VendorId::default().to_string(),
        },
    };
    let host_version =
        |reg, shift: u32, mask: u32| host_reg(tlfs::HV_VERSION, reg).map(|v| (v >> shift) & mask);
    let pick = |flag, from_host: Option<u32>, default: u32| {
        wanted.number(flag).or(from_host).unwrap_or(default)
    };
    let version = HvVersion {
        build: pick(
            E::VersionIdBuild,
            host_version(Reg::Eax, 0, u32::MAX),
            tlfs::DEFAULT_VERSION_BUILD,
        ),
        major: pick(
            E::VersionIdMajor,
            host_version(Reg::Ebx, 16, 0xFFFF),
            tlfs::DEFAULT_VERSION_MAJOR,
        ),
        minor: pick(
            E::VersionIdMinor,
            host_version(Reg::Ebx, 0, 0xFFFF),
            tlfs::DEFAULT_VERSION_MINOR,
        ),
        service_pack: pick(E::VersionIdSpack, host_version(Reg::Ecx, 0, u32::MAX), 0),
        service_branch: pick(E::VersionIdSbranch, host_version(Reg::Edx, 24, 0xFF), 0),
        service_number: pick(E::VersionIdSnumber, host_version(Reg::Edx, 0, 0xFF_FFFF), 0),
    };
    let no_nonarch_coresharing = on(E::NoNonarchCoresharing)
        && match wanted.coresharing() {
            Some(Coresharing::On) => true,
            Some(Coresharing::Auto) => migration::host_says_no_smt(host),
            _ => false,
        };
    let kvm_bits = |reg: Reg| {
        Enlightenment::all()
            .filter(|f| f.kind() == FlagKind::KvmParavirt && on(*f))
            .flat_map(|f| f.def().cpuid.iter())
            .filter(|b| b.reg == reg)
            .fold(0, |acc, b| acc | b.mask)
    };
    GuestSettings {
        spinlock_retries: if on(E::Spinlocks) {
            wanted.spinlocks().unwrap_or(tlfs::SPINLOCKS_NEVER_NOTIFY)
        } else {
            tlfs::SPINLOCKS_NEVER_NOTIFY
        },
        vendor_id: vendor,
        version,
        no_nonarch_coresharing,
        max_vps: opts
            .max_vps
            .or(host_reg(tlfs::HV_LIMITS, Reg::Eax))
            .unwrap_or(tlfs::DEFAULT_MAX_VPS),
        max_lps: host_reg(tlfs::HV_LIMITS, Reg::Ebx).unwrap_or(tlfs::DEFAULT_MAX_LPS),
        evmcs_version: on(E::Evmcs).then_some(tlfs::EVMCS_VERSION_RANGE),
        hypercall_interface: backend.hypercall_interface(),
        kvm_signature: on(E::Kvm),
        kvm_features: kvm_bits(Reg::Eax),
        kvm_hints: kvm_bits(Reg::Edx),
        tsc_frequency_hz,
    }
}

/// The explicit settings that reproduce this guest without profile or passthrough.
fn final_config(
    slots: &[Slot],
    wanted: &HvConfig,
    guest: &GuestSettings,
) -> Result<HvConfig, ModelError> {
    let mut c = HvConfig::new();
    for flag in Enlightenment::all() {
        let on = slots[flag as usize].on;
        match flag {
            E::Passthrough => {}
            E::Spinlocks if on => c.set_value(flag, FlagValue::Retries(guest.spinlock_retries))?,
            E::VendorId if guest.vendor_id != tlfs::DEFAULT_VENDOR => {
                c.set_value(flag, FlagValue::Vendor(VendorId::new(&guest.vendor_id)?))?
            }
            E::NoNonarchCoresharing if on => {
                if let Some(v) = wanted.coresharing() {
                    c.set_value(flag, FlagValue::Coresharing(v))?
                }
            }
            _ if flag.kind() == FlagKind::Identity && flag != E::VendorId => {
                let (value, default) = version_field(flag, &guest.version);
                if wanted.number(flag).is_some() || value != default {
                    c.set_value(flag, FlagValue::Number(value))?
                }
            }
            _ if flag.def().value != crate::flags::ValueKind::Switch => {}
            // KVM paravirt defaults stay defaults (they follow the host, as QEMU -cpu host);
            // what a profile or the user pinned is kept, on or off.
            _ if flag.kind() == FlagKind::KvmParavirt => match (slots[flag as usize].origin, on) {
                (Origin::Default | Origin::NotRequested, _) => {}
                (_, true) => c.enable(flag)?,
                (_, false) => c.disable(flag),
            },
            _ if on => c.enable(flag)?,
            _ => {}
        }
    }
    if let Some(hz) = guest.tsc_frequency_hz {
        c.set_tsc_frequency(hz)?;
    }
    Ok(c)
}

/// The effective value of a `hv-version-id-*` flag and QEMU's default for it.
fn version_field(flag: Enlightenment, v: &HvVersion) -> (u32, u32) {
    match flag {
        E::VersionIdBuild => (v.build, tlfs::DEFAULT_VERSION_BUILD),
        E::VersionIdMajor => (v.major, tlfs::DEFAULT_VERSION_MAJOR),
        E::VersionIdMinor => (v.minor, tlfs::DEFAULT_VERSION_MINOR),
        E::VersionIdSpack => (v.service_pack, 0),
        E::VersionIdSbranch => (v.service_branch, 0),
        _ => (v.service_number, 0),
    }
}

fn decisions(
    slots: Vec<Slot>,
    wanted: &HvConfig,
    guest: &GuestSettings,
    hyperv: bool,
) -> Vec<Decision> {
    slots
        .into_iter()
        .zip(Enlightenment::all())
        .map(|(slot, flag)| {
            let value = match flag {
                E::Spinlocks if slot.on => Some(format!("{:#x}", guest.spinlock_retries)),
                E::VendorId => Some(guest.vendor_id.clone()),
                E::VersionIdBuild => Some(format!("{:#x}", guest.version.build)),
                E::VersionIdMajor => Some(guest.version.major.to_string()),
                E::VersionIdMinor => Some(guest.version.minor.to_string()),
                E::VersionIdSpack => Some(guest.version.service_pack.to_string()),
                E::VersionIdSbranch => Some(guest.version.service_branch.to_string()),
                E::VersionIdSnumber => Some(guest.version.service_number.to_string()),
                E::NoNonarchCoresharing if slot.on => Some(match wanted.coresharing() {
                    Some(Coresharing::Auto) => {
                        format!("auto ({})", bit_state(guest.no_nonarch_coresharing))
                    }
                    _ => "on".into(),
                }),
                _ => None,
            };
            let mut reason = slot.reason;
            if flag == E::Kvm && slot.on {
                reason += if hyperv {
                    "; KVM's leaves move to 0x40000100 while Hyper-V is on"
                } else {
                    "; no Hyper-V, so KVM's leaves stay at 0x40000000"
                };
            }
            if flag.kind() == FlagKind::Identity && !slot.on {
                reason = "default".into();
            }
            Decision {
                flag,
                on: slot.on,
                origin: slot.origin,
                requested: slot.requested,
                value,
                reason,
            }
        })
        .collect()
}

fn bit_state(on: bool) -> &'static str {
    if on {
        "host has no SMT: bit set"
    } else {
        "host may use SMT: bit clear"
    }
}
