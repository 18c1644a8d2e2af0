//! What a user asks for, flag by flag: explicit per-flag settings ([`HvConfig`]) and their
//! values. A request (a profile plus these settings) is [`crate::request::HvRequest`].
//!
//! Layer 4: depends on [`crate::flags`], [`crate::error`] and [`crate::tlfs`].

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::error::ModelError;
use crate::flags::{Enlightenment, ValueKind};
use crate::tlfs;

/// A validated Hyper-V vendor string: 1 to 12 printable ASCII characters (it fills
/// 40000000.EBX:ECX:EDX). QEMU truncates longer strings with a warning; hvkvm refuses them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VendorId(String);

impl VendorId {
    /// Validates a vendor string.
    pub fn new(s: &str) -> Result<VendorId, ModelError> {
        let bad = |why: String| ModelError::BadValue {
            flag: Enlightenment::VendorId,
            value: s.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(bad(
                "the vendor string is empty; give 1 to 12 characters".into()
            ));
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
            return Err(bad(format!(
                "character {c:?} is not printable ASCII; CPUID carries raw bytes"
            )));
        }
        if s.contains(',') {
            return Err(bad(
                "',' cannot appear in a QEMU -cpu list; choose another".into()
            ));
        }
        if s.starts_with(' ') || s.ends_with(' ') {
            return Err(bad(
                "it starts or ends with a space, which QEMU command lines and configuration \
                 files do not keep; remove it (the vendor string is padded with zero bytes)"
                    .into(),
            ));
        }
        if s.len() > 12 {
            return Err(bad(format!(
                "it is {} characters long but 0x40000000.EBX/ECX/EDX hold 12; shorten it",
                s.len()
            )));
        }
        Ok(VendorId(s.to_string()))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for VendorId {
    fn default() -> Self {
        VendorId(tlfs::DEFAULT_VENDOR.to_string())
    }
}

impl fmt::Display for VendorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `hv-no-nonarch-coresharing` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Coresharing {
    /// Always tell the guest cores are never shared (only safe with pinned vCPUs).
    On,
    /// Never tell it.
    Off,
    /// Tell it when the host has SMT off (what KVM reports); blocks migration.
    Auto,
}

impl fmt::Display for Coresharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Coresharing::On => "on",
            Coresharing::Off => "off",
            Coresharing::Auto => "auto",
        })
    }
}

/// The value of a flag that takes one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlagValue {
    /// `hv-spinlocks` retries.
    Retries(u32),
    /// `hv-vendor-id`.
    Vendor(VendorId),
    /// `hv-no-nonarch-coresharing`.
    Coresharing(Coresharing),
    /// A `hv-version-id-*` number.
    Number(u32),
}

impl fmt::Display for FlagValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagValue::Retries(n) => write!(f, "{n:#x}"),
            FlagValue::Vendor(v) => write!(f, "{v}"),
            FlagValue::Coresharing(c) => write!(f, "{c}"),
            FlagValue::Number(n) => write!(f, "{n:#x}"),
        }
    }
}

/// Parses a number as QEMU does: decimal, or hex with `0x`.
pub(crate) fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses on/off the way QEMU's boolean properties do.
pub(crate) fn parse_switch(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Some(true),
        "off" | "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// Validates spinlock retries (04.EBX). KVM ignores HvNotifyLongSpinWait when EBX is 0 or
/// ~0; QEMU before 5.x, libvirt and KubeVirt require at least 0xfff.
pub fn check_spinlocks(retries: u32) -> Result<u32, ModelError> {
    if retries < tlfs::SPINLOCKS_MIN {
        return Err(ModelError::BadValue {
            flag: Enlightenment::Spinlocks,
            value: format!("{retries:#x}"),
            why: "Windows would notify the hypervisor after so few spins; use at least \
                  0xfff (4095, the libvirt/KubeVirt minimum), 0x1fff for general use, or \
                  0xffffffff to never notify"
                .into(),
        });
    }
    Ok(retries)
}

/// Explicit per-flag settings: each mentioned flag is on or off; value flags carry their value.
/// Flags not mentioned keep their default (or the profile's choice in an [`HvRequest`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HvConfig {
    states: BTreeMap<Enlightenment, bool>,
    values: BTreeMap<Enlightenment, FlagValue>,
    /// Fixed guest TSC frequency in Hz (QEMU `tsc-frequency=`), needed to migrate a guest that
    /// uses hv-reenlightenment.
    pub tsc_frequency_hz: Option<u64>,
}

impl HvConfig {
    /// An empty configuration (everything at its default).
    pub fn new() -> HvConfig {
        HvConfig::default()
    }

    /// Whether nothing is mentioned.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.tsc_frequency_hz.is_none()
    }

    /// The explicit state of a flag, if mentioned.
    pub fn state(&self, flag: Enlightenment) -> Option<bool> {
        self.states.get(&flag).copied()
    }

    /// The value of a value flag, if set.
    pub fn value(&self, flag: Enlightenment) -> Option<&FlagValue> {
        self.values.get(&flag)
    }

    /// Every mentioned flag with its state, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (Enlightenment, bool)> + '_ {
        self.states.iter().map(|(f, on)| (*f, *on))
    }

    /// Flags that are on, in table order.
    pub fn enabled(&self) -> Vec<Enlightenment> {
        self.iter().filter(|(_, on)| *on).map(|(f, _)| f).collect()
    }

    /// Turns a flag off (and forgets its value).
    pub fn disable(&mut self, flag: Enlightenment) {
        self.states.insert(flag, false);
        self.values.remove(&flag);
    }

    /// Forgets a flag entirely (back to default).
    pub fn forget(&mut self, flag: Enlightenment) {
        self.states.remove(&flag);
        self.values.remove(&flag);
    }

    /// Turns a flag on. Flags whose on-state needs a value (spinlocks, vendor id, version
    /// ids) must be set with [`HvConfig::set_value`]; `hv-no-nonarch-coresharing` means `on`.
    pub fn enable(&mut self, flag: Enlightenment) -> Result<(), ModelError> {
        match flag.def().value {
            ValueKind::Switch => {
                self.states.insert(flag, true);
                Ok(())
            }
            ValueKind::OnOffAuto => self.set_value(flag, FlagValue::Coresharing(Coresharing::On)),
            ValueKind::Retries => Err(ModelError::MissingValue {
                flag,
                example: "hv-spinlocks=0x1fff",
            }),
            ValueKind::Vendor => Err(ModelError::MissingValue {
                flag,
                example: "hv-vendor-id=KVMKVMKVM",
            }),
            ValueKind::Number(_) => Err(ModelError::MissingValue {
                flag,
                example: "hv-version-id-build=0x3839",
            }),
        }
    }

    /// Sets a value flag. `hv-spinlocks=0xffffffff` and `hv-no-nonarch-coresharing=off` mean off.
    pub fn set_value(&mut self, flag: Enlightenment, value: FlagValue) -> Result<(), ModelError> {
        let kind = flag.def().value;
        let fits = matches!(
            (&value, kind),
            (FlagValue::Retries(_), ValueKind::Retries)
                | (FlagValue::Vendor(_), ValueKind::Vendor)
                | (FlagValue::Coresharing(_), ValueKind::OnOffAuto)
                | (FlagValue::Number(_), ValueKind::Number(_))
        );
        if !fits {
            return Err(ModelError::BadValue {
                flag,
                value: value.to_string(),
                why: "this flag takes a different kind of value".into(),
            });
        }
        match value {
            FlagValue::Retries(tlfs::SPINLOCKS_NEVER_NOTIFY)
            | FlagValue::Coresharing(Coresharing::Off) => self.disable(flag),
            FlagValue::Retries(n) => {
                check_spinlocks(n)?;
                self.states.insert(flag, true);
                self.values.insert(flag, value);
            }
            FlagValue::Number(n) => {
                if let ValueKind::Number(width) = kind {
                    if width < 32 && n >= 1 << width {
                        return Err(ModelError::BadValue {
                            flag,
                            value: format!("{n:#x}"),
                            why: format!(
                                "it must fit in {width} bits (at most {:#x})",
                                (1u64 << width) - 1
                            ),
                        });
                    }
                }
                self.states.insert(flag, true);
                self.values.insert(flag, value);
            }
            _ => {
                self.states.insert(flag, true);
                self.values.insert(flag, value);
            }
        }
        Ok(())
    }

    /// Applies `name=text` (or `name` when `text` is None) with QEMU's value syntax.
    pub fn apply_text(
        &mut self,
        flag: Enlightenment,
        text: Option<&str>,
    ) -> Result<(), ModelError> {
        let Some(text) = text else {
            return self.enable(flag);
        };
        let bad = |why: &str| ModelError::BadValue {
            flag,
            value: text.to_string(),
            why: why.to_string(),
        };
        match flag.def().value {
            ValueKind::Switch => match parse_switch(text) {
                Some(true) => self.enable(flag),
                Some(false) => {
                    self.disable(flag);
                    Ok(())
                }
                None => Err(bad("expected on or off")),
            },
            ValueKind::OnOffAuto => {
                let v = match text.trim().to_ascii_lowercase().as_str() {
                    "auto" => Coresharing::Auto,
                    other => match parse_switch(other) {
                        Some(true) => Coresharing::On,
                        Some(false) => Coresharing::Off,
                        None => return Err(bad("expected on, off or auto")),
                    },
                };
                self.set_value(flag, FlagValue::Coresharing(v))
            }
            ValueKind::Retries => {
                if parse_switch(text) == Some(false) {
                    self.disable(flag);
                    return Ok(());
                }
                let n = parse_number(text)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        bad("expected a retry count such as 0x1fff or 8191 (32 bits)")
                    })?;
                self.set_value(flag, FlagValue::Retries(n))
            }
            ValueKind::Vendor => self.set_value(flag, FlagValue::Vendor(VendorId::new(text)?)),
            ValueKind::Number(width) => {
                let n = parse_number(text)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(&format!("expected a number of at most {width} bits")))?;
                self.set_value(flag, FlagValue::Number(n))
            }
        }
    }

    /// Sets the guest TSC frequency.
    pub fn set_tsc_frequency(&mut self, hz: u64) -> Result<(), ModelError> {
        if hz == 0 {
            return Err(ModelError::BadValue {
                flag: Enlightenment::Reenlightenment,
                value: "tsc-frequency=0".into(),
                why: "the TSC frequency must be positive, in Hz (e.g. 2500000000)".into(),
            });
        }
        self.tsc_frequency_hz = Some(hz);
        Ok(())
    }

    /// Spinlock retries when on.
    pub fn spinlocks(&self) -> Option<u32> {
        match self.values.get(&Enlightenment::Spinlocks) {
            Some(FlagValue::Retries(n)) => Some(*n),
            _ => None,
        }
    }

    /// Vendor override when set.
    pub fn vendor_id(&self) -> Option<&VendorId> {
        match self.values.get(&Enlightenment::VendorId) {
            Some(FlagValue::Vendor(v)) => Some(v),
            _ => None,
        }
    }

    /// Coresharing setting when mentioned (`Off` when turned off).
    pub fn coresharing(&self) -> Option<Coresharing> {
        match (
            self.state(Enlightenment::NoNonarchCoresharing),
            self.values.get(&Enlightenment::NoNonarchCoresharing),
        ) {
            (Some(false), _) => Some(Coresharing::Off),
            (_, Some(FlagValue::Coresharing(c))) => Some(*c),
            _ => None,
        }
    }

    /// A number value (version ids) when set.
    pub fn number(&self, flag: Enlightenment) -> Option<u32> {
        match self.values.get(&flag) {
            Some(FlagValue::Number(n)) => Some(*n),
            _ => None,
        }
    }

    /// Overlays `other` on `self` (later settings win, as on QEMU's command line).
    pub fn merge(&mut self, other: &HvConfig) {
        for (flag, on) in other.iter() {
            self.states.insert(flag, on);
            match other.values.get(&flag) {
                Some(v) => {
                    self.values.insert(flag, v.clone());
                }
                None => {
                    self.values.remove(&flag);
                }
            }
        }
        if other.tsc_frequency_hz.is_some() {
            self.tsc_frequency_hz = other.tsc_frequency_hz;
        }
    }

    /// The QEMU `-cpu` suffix / hvkvm `--hv` list: `name`, `name=value`, `name=off`.
    pub fn to_hv_list(&self) -> String {
        let mut items: Vec<String> = self
            .iter()
            .map(|(flag, on)| match (on, self.values.get(&flag)) {
                (false, _) => format!("{flag}=off"),
                (true, Some(v)) => format!("{flag}={v}"),
                (true, None) => flag.to_string(),
            })
            .collect();
        if let Some(hz) = self.tsc_frequency_hz {
            items.push(format!("tsc-frequency={hz}"));
        }
        items.join(",")
    }
}

impl fmt::Display for HvConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hv_list())
    }
}

/// JSON form: `{"hv-relaxed": true, "hv-spinlocks": 8191, "hv-vendor-id": "KVM Hv",
/// "hv-no-nonarch-coresharing": "auto", "kvm": false, "tsc-frequency": 2500000000}`.
impl Serialize for HvConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (flag, on) in self.iter() {
            match (on, self.values.get(&flag)) {
                (true, Some(FlagValue::Retries(n) | FlagValue::Number(n))) => {
                    map.serialize_entry(flag.name(), n)?
                }
                (true, Some(FlagValue::Vendor(v))) => {
                    map.serialize_entry(flag.name(), v.as_str())?
                }
                (true, Some(FlagValue::Coresharing(c))) => {
                    map.serialize_entry(flag.name(), &c.to_string())?
                }
                (on, _) => map.serialize_entry(flag.name(), &on)?,
            }
        }
        if let Some(hz) = self.tsc_frequency_hz {
            map.serialize_entry("tsc-frequency", &hz)?;
        }
        map.end()
    }
}
