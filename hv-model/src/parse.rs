//! Parsing of QEMU-style comma lists: `hv-relaxed,hv-vapic,hv-spinlocks=0x1fff`,
//! `relaxed,vapic` (no prefix), `hv_time` spellings, `+hv-ipi`/`-hv-ipi` and `=on/off` forms,
//! plus `kvm=on|off` and `tsc-frequency=HZ`.
//!
//! Layer 8: depends on [`crate::config`], [`crate::request`], [`crate::flags`],
//! [`crate::error`].

use crate::config::{parse_number, HvConfig};
use crate::error::ModelError;
use crate::flags::Enlightenment;
use crate::request::HvRequest;

/// Parses a `--hv` list into a request without profile. Later items win, as on QEMU's
/// command line. Unknown names are errors (with a "did you mean").
///
/// ```
/// let req = hv_model::parse_hv_list("hv-relaxed,hv_vapic,spinlocks=0x1fff,-hv-evmcs").unwrap();
/// assert_eq!(req.overrides.spinlocks(), Some(0x1fff));
/// ```
pub fn parse_hv_list(s: &str) -> Result<HvRequest, ModelError> {
    let mut config = HvConfig::new();
    for item in split_items(s) {
        match parse_item(item)? {
            Item::Flag(flag, value) => config.apply_text(flag, value.as_deref())?,
            Item::TscFrequency(hz) => config.set_tsc_frequency(hz)?,
        }
    }
    Ok(HvRequest::from_config(config))
}

/// One parsed list item.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// A flag with `None` (bare name: on) or `Some(text)` after `=` (`+x` → on, `-x` → off).
    Flag(Enlightenment, Option<String>),
    /// `tsc-frequency=HZ`.
    TscFrequency(u64),
}

/// Splits on commas and drops empty items (a trailing comma is harmless).
pub(crate) fn split_items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|i| !i.is_empty())
}

/// Parses one item; unknown names give [`ModelError::UnknownFlag`].
pub(crate) fn parse_item(item: &str) -> Result<Item, ModelError> {
    let syntax = |why| ModelError::BadSyntax {
        item: item.to_string(),
        why,
    };
    let (sign, rest) = match item.as_bytes().first() {
        Some(b'+') => (Some(true), &item[1..]),
        Some(b'-') => (Some(false), &item[1..]),
        _ => (None, item),
    };
    let (name, value) = match rest.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (rest.trim(), None),
    };
    if name.is_empty() {
        return Err(syntax("the flag name is missing"));
    }
    if sign.is_some() && value.is_some() {
        return Err(syntax("use either +name/-name or name=value, not both"));
    }
    if is_tsc_frequency(name) {
        let hz = value.and_then(parse_number).ok_or_else(|| {
            syntax("tsc-frequency needs a number in Hz, e.g. tsc-frequency=2500000000")
        })?;
        return Ok(Item::TscFrequency(hz));
    }
    let flag = Enlightenment::from_name(name)?;
    let value = match sign {
        Some(true) => Some("on".to_string()),
        Some(false) => Some("off".to_string()),
        None => value.map(str::to_string),
    };
    // `+hv-spinlocks` cannot carry the retry count; treat it like the bare name.
    let value = match (sign, flag.def().value) {
        (Some(true), crate::flags::ValueKind::Retries | crate::flags::ValueKind::Vendor) => None,
        _ => value,
    };
    Ok(Item::Flag(flag, value))
}

fn is_tsc_frequency(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().replace('_', "-").as_str(),
        "tsc-frequency" | "tsc-freq"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Coresharing;
    use Enlightenment as E;

    #[test]
    fn accepts_every_spelling() {
        let req = parse_hv_list(
            "hv-relaxed,hv_vapic,time,+hv-vpindex,hv-synic=on,hv-stimer=yes,\
             hv-spinlocks=0x1fff,hv-vendor-id=KVMKVMKVM,hv-no-nonarch-coresharing=auto,kvm=off,",
        )
        .unwrap();
        let c = &req.overrides;
        for f in [
            E::Relaxed,
            E::Vapic,
            E::Time,
            E::Vpindex,
            E::Synic,
            E::Stimer,
        ] {
            assert_eq!(c.state(f), Some(true), "{f}");
        }
        assert_eq!(c.spinlocks(), Some(0x1fff));
        assert_eq!(c.vendor_id().unwrap().as_str(), "KVMKVMKVM");
        assert_eq!(c.coresharing(), Some(Coresharing::Auto));
        assert_eq!(c.state(E::Kvm), Some(false));
    }

    #[test]
    fn later_items_win() {
        let req = parse_hv_list("hv-evmcs,-hv-evmcs").unwrap();
        assert_eq!(req.overrides.state(E::Evmcs), Some(false));
        let req = parse_hv_list("hv-evmcs=off,hv_evmcs").unwrap();
        assert_eq!(req.overrides.state(E::Evmcs), Some(true));
    }

    #[test]
    fn spinlocks_never_notify_means_off() {
        let req = parse_hv_list("hv-spinlocks=0xffffffff").unwrap();
        assert_eq!(req.overrides.state(E::Spinlocks), Some(false));
    }

    #[test]
    fn tsc_frequency_is_captured() {
        let req = parse_hv_list("hv-reenlightenment,tsc-frequency=2500000000").unwrap();
        assert_eq!(req.overrides.tsc_frequency_hz, Some(2_500_000_000));
    }

    #[test]
    fn bad_items_are_errors() {
        for bad in [
            "hv-bogus",
            "hv-spinlocks",
            "hv-spinlocks=12",
            "hv-spinlocks=0x1_0000_0000",
            "hv-spinlocks=lots",
            "hv-vendor-id=ThisIsWayTooLong",
            "hv-vendor-id=",
            "hv-relaxed=maybe",
            "+hv-relaxed=on",
            "=on",
            "-",
            "hv-no-nonarch-coresharing=sometimes",
            "hv-version-id-sbranch=0x100",
            "tsc-frequency=fast",
            "tsc-frequency=0",
        ] {
            assert!(parse_hv_list(bad).is_err(), "{bad} was accepted");
        }
    }
}
