//! KubeVirt YAML (kubevirt.io/api/core/v1 `FeatureHyperv`): `spec.domain.features.hyperv`,
//! `features.hypervPassthrough`, `features.kvm.hidden` and `clock.timer.hyperv` (hv-time).
//! Import accepts a VirtualMachine (`spec.template.spec.domain`), a VirtualMachineInstance
//! (`spec.domain`), or a bare `domain`/`features` mapping.

use std::fmt::Write as _;

use serde_norway::{Mapping, Value};

use crate::config::HvConfig;
use crate::flags::{Enlightenment as E, Enlightenment, FlagKind};
use crate::formats::{DropList, Exported, FormatError, Imported};
use crate::version::Version;

/// `kubevirt.io/v1` fields newer than the oldest supported KubeVirt, with their flag and the
/// KubeVirt release that added them (from the tags of the kubevirt.io/api module: `TLBFlush`
/// got `direct`/`extended` in v1.8.0, `Features` got `hypervPassthrough` in v1.3.0).
pub const NEWER_FIELDS: &[(&str, Enlightenment, Version)] = &[
    (
        "features.hyperv.tlbflush.direct",
        E::TlbflushDirect,
        Version::new(1, 8),
    ),
    (
        "features.hyperv.tlbflush.extended",
        E::TlbflushExt,
        Version::new(1, 8),
    ),
    (
        "features.hypervPassthrough",
        E::Passthrough,
        Version::new(1, 3),
    ),
];
use crate::request::HvRequest;

/// `FeatureHyperv` fields and their flags. Fields with sub-features are handled apart.
const HYPERV_FIELDS: &[(&str, Enlightenment)] = &[
    ("relaxed", E::Relaxed),
    ("vapic", E::Vapic),
    ("spinlocks", E::Spinlocks),
    ("vpindex", E::Vpindex),
    ("runtime", E::Runtime),
    ("synic", E::Synic),
    ("synictimer", E::Stimer),
    ("reset", E::Reset),
    ("vendorid", E::VendorId),
    ("frequencies", E::Frequencies),
    ("reenlightenment", E::Reenlightenment),
    ("tlbflush", E::Tlbflush),
    ("ipi", E::Ipi),
    ("evmcs", E::Evmcs),
];

/// KubeVirt's documented default for `spinlocks.spinlocks` (and its minimum).
const KUBEVIRT_SPINLOCKS_DEFAULT: u32 = 4096;

/// Reads KubeVirt YAML.
pub fn import(text: &str) -> Result<Imported, FormatError> {
    let root: Value = serde_norway::from_str(text).map_err(FormatError::Yaml)?;
    let (domain, path) = find_domain(&root)?;
    let mut config = HvConfig::new();
    let mut found = false;
    if let Some(features) = field(domain, "features", &path)? {
        let path = format!("{path}.features");
        if let Some(hv) = field(features, "hyperv", &path)? {
            found = true;
            import_hyperv(hv, &format!("{path}.hyperv"), &mut config)?;
        }
        if let Some(pt) = field(features, "hypervPassthrough", &path)? {
            found = true;
            let on = enabled(pt, &format!("{path}.hypervPassthrough"))?;
            set(&mut config, E::Passthrough, on, &path)?;
        }
        if let Some(kvm) = field(features, "kvm", &path)? {
            if let Some(hidden) = field(kvm, "hidden", &format!("{path}.kvm"))? {
                found = true;
                let hidden = hidden
                    .as_bool()
                    .ok_or_else(|| wrong(&format!("{path}.kvm.hidden"), "a boolean"))?;
                set(&mut config, E::Kvm, !hidden, &path)?;
            }
        }
    }
    let timer_path = format!("{path}.clock.timer");
    if let Some(timer) = field(domain, "clock", &path)?
        .map(|c| field(c, "timer", &format!("{path}.clock")))
        .transpose()?
        .flatten()
    {
        if let Some(hv) = field(timer, "hyperv", &timer_path)? {
            found = true;
            let on = flag_state(hv, "present", &format!("{timer_path}.hyperv"))?;
            set(&mut config, E::Time, on, &timer_path)?;
        }
    }
    if !found {
        return Err(FormatError::Structure(format!(
            "no Hyper-V settings under {path}: expected features.hyperv, \
             features.hypervPassthrough, \
             features.kvm.hidden or clock.timer.hyperv"
        )));
    }
    Ok(Imported {
        request: HvRequest::from_config(config),
        notes: Vec::new(),
    })
}

/// Finds the `domain` mapping and its path.
fn find_domain(root: &Value) -> Result<(&Value, String), FormatError> {
    let walk = |keys: &[&str]| -> Option<&Value> {
        keys.iter().try_fold(root, |v, k| v.as_mapping()?.get(*k))
    };
    for (keys, path) in [
        (
            &["spec", "template", "spec", "domain"][..],
            "spec.template.spec.domain",
        ),
        (&["spec", "domain"][..], "spec.domain"),
        (&["domain"][..], "domain"),
    ] {
        if let Some(d) = walk(keys) {
            if !d.is_mapping() {
                return Err(wrong(path, "a mapping"));
            }
            return Ok((d, path.to_string()));
        }
    }
    if root
        .as_mapping()
        .is_some_and(|m| m.contains_key("features") || m.contains_key("clock"))
    {
        return Ok((root, "(root)".into()));
    }
    if root.as_mapping().is_some_and(|m| m.contains_key("hyperv")) {
        return Err(FormatError::Structure(
            "found a bare 'hyperv' key: wrap it as features: {hyperv: ...} or give the whole \
             VirtualMachine/VirtualMachineInstance"
                .into(),
        ));
    }
    Err(FormatError::Structure(
        "not a KubeVirt VirtualMachine/VirtualMachineInstance: expected spec.template.spec.domain, \
         spec.domain, domain or features"
            .into(),
    ))
}

fn import_hyperv(hv: &Value, path: &str, config: &mut HvConfig) -> Result<(), FormatError> {
    let map = mapping(hv, path)?;
    for (key, value) in map {
        let key = key
            .as_str()
            .ok_or_else(|| wrong(path, "a mapping with string keys"))?;
        let here = format!("{path}.{key}");
        let Some(&(_, flag)) = HYPERV_FIELDS.iter().find(|(n, _)| *n == key) else {
            let known: Vec<&str> = HYPERV_FIELDS.iter().map(|(n, _)| *n).collect();
            return Err(FormatError::Structure(format!(
                "{here}: unknown KubeVirt Hyper-V feature '{key}'; known: {}",
                known.join(", ")
            )));
        };
        let on = enabled(value, &here)?;
        match (flag, on) {
            (E::Spinlocks, true) => {
                let retries = match field(value, "spinlocks", &here)? {
                    Some(v) => v
                        .as_u64()
                        .ok_or_else(|| wrong(&format!("{here}.spinlocks"), "an integer"))?,
                    None => u64::from(KUBEVIRT_SPINLOCKS_DEFAULT),
                };
                config
                    .apply_text(flag, Some(&retries.to_string()))
                    .map_err(FormatError::setting(here.clone()))?;
            }
            (E::VendorId, true) => {
                let v = field(value, "vendorid", &here)?.ok_or_else(|| {
                    FormatError::Structure(format!(
                        "{here}: vendorid.vendorid is required when enabled"
                    ))
                })?;
                let v = v
                    .as_str()
                    .ok_or_else(|| wrong(&format!("{here}.vendorid"), "a string"))?;
                config
                    .apply_text(flag, Some(v))
                    .map_err(FormatError::setting(here.clone()))?;
            }
            _ => set(config, flag, on, &here)?,
        }
        let subs: &[(&str, Enlightenment)] = match flag {
            E::Stimer => &[("direct", E::StimerDirect)],
            E::Tlbflush => &[("direct", E::TlbflushDirect), ("extended", E::TlbflushExt)],
            _ => &[],
        };
        for (name, sub) in subs {
            if let Some(v) = field(value, name, &here)? {
                let on = enabled(v, &format!("{here}.{name}"))?;
                set(config, *sub, on, &here)?;
            }
        }
    }
    Ok(())
}

fn set(
    config: &mut HvConfig,
    flag: Enlightenment,
    on: bool,
    path: &str,
) -> Result<(), FormatError> {
    if on {
        config.enable(flag).map_err(FormatError::setting(path))
    } else {
        config.disable(flag);
        Ok(())
    }
}

/// A `FeatureState`: `{}`, `null` or `{enabled: bool}`; enabled defaults to true.
fn enabled(v: &Value, path: &str) -> Result<bool, FormatError> {
    flag_state(v, "enabled", path)
}

fn flag_state(v: &Value, key: &str, path: &str) -> Result<bool, FormatError> {
    if v.is_null() {
        return Ok(true);
    }
    match field(v, key, path)? {
        None => Ok(true),
        Some(b) => b
            .as_bool()
            .ok_or_else(|| wrong(&format!("{path}.{key}"), "a boolean")),
    }
}

fn field<'a>(v: &'a Value, key: &str, path: &str) -> Result<Option<&'a Value>, FormatError> {
    if v.is_null() {
        return Ok(None);
    }
    Ok(mapping(v, path)?.get(key))
}

fn mapping<'a>(v: &'a Value, path: &str) -> Result<&'a Mapping, FormatError> {
    v.as_mapping().ok_or_else(|| wrong(path, "a mapping"))
}

fn wrong(path: &str, what: &str) -> FormatError {
    FormatError::Structure(format!("{path} must be {what}"))
}

/// Writes a VirtualMachineInstance `spec.domain` fragment for KubeVirt `version`; fields that
/// release lacks are left out and listed in `dropped`.
pub fn export(config: &HvConfig, version: Version) -> Exported {
    let mut drops = DropList::default();
    let mut kept = config.clone();
    for &(field, flag, since) in NEWER_FIELDS {
        if let (Some(on), true) = (config.state(flag), version < since) {
            kept.forget(flag);
            drops.too_new(
                flag,
                on,
                &format!("KubeVirt {version} has no {field} (added in KubeVirt {since})"),
                true,
            );
        }
    }
    let config = &kept;
    let mut hv = String::new();
    let state = |on: bool| if on { "{}" } else { "{enabled: false}" };
    for &(name, flag) in HYPERV_FIELDS {
        let subs: Vec<(&str, bool)> = match flag {
            E::Stimer => sub_states(config, &[("direct", E::StimerDirect)]),
            E::Tlbflush => sub_states(
                config,
                &[("direct", E::TlbflushDirect), ("extended", E::TlbflushExt)],
            ),
            _ => Vec::new(),
        };
        let on = config.state(flag);
        if on.is_none() && subs.is_empty() {
            continue;
        }
        let on = on.unwrap_or(false);
        let mut body: Vec<String> = Vec::new();
        if !on {
            body.push("enabled: false".into());
        }
        match flag {
            E::Spinlocks if on => match config.spinlocks() {
                Some(n) if n >= KUBEVIRT_SPINLOCKS_DEFAULT => body.push(format!("spinlocks: {n}")),
                _ => {
                    drops.add(flag, "KubeVirt requires spinlocks >= 4096");
                    continue;
                }
            },
            E::VendorId if on => {
                let v = config.vendor_id().map_or("", |v| v.as_str());
                body.push(format!("vendorid: {}", quote(v)));
            }
            _ => {}
        }
        for (sub, sub_on) in subs {
            body.push(format!("{sub}: {}", state(sub_on)));
        }
        if body.is_empty() {
            let _ = writeln!(hv, "        {name}: {}", state(true));
        } else {
            let _ = writeln!(hv, "        {name}:");
            for line in body {
                let _ = writeln!(hv, "          {line}");
            }
        }
    }
    for (flag, _) in config.iter() {
        let reason = match flag {
            E::Time
            | E::Passthrough
            | E::Kvm
            | E::StimerDirect
            | E::TlbflushDirect
            | E::TlbflushExt => continue,
            f if HYPERV_FIELDS.iter().any(|(_, k)| *k == f) => continue,
            f if f.kind() == FlagKind::KvmParavirt => {
                "KubeVirt only has features.kvm.hidden; the CPU model decides it"
            }
            _ => "KubeVirt's FeatureHyperv has no field for it",
        };
        drops.add(flag, reason);
    }
    if config.tsc_frequency_hz.is_some() {
        drops.add_tsc_frequency(
            "KubeVirt chooses the guest TSC frequency itself (topology hints, needs TSC scaling \
             on the nodes)",
        );
    }
    let mut out = drops.comments("# ", "");
    out.push_str(
        "# hvkvm: merge into a VirtualMachineInstance spec.domain (spec.template.spec.domain in \
         a VirtualMachine)\nspec:\n  domain:\n",
    );
    if let Some(on) = config.state(E::Time) {
        let present = if on { "{}" } else { "{present: false}" };
        let _ = write!(out, "    clock:\n      timer:\n        hyperv: {present}\n");
    }
    let passthrough = config.state(E::Passthrough);
    let kvm = config.state(E::Kvm);
    if !hv.is_empty() || passthrough.is_some() || kvm.is_some() {
        out.push_str("    features:\n");
        if !hv.is_empty() {
            let _ = write!(out, "      hyperv:\n{hv}");
        }
        if let Some(on) = passthrough {
            let _ = writeln!(out, "      hypervPassthrough: {{enabled: {on}}}");
        }
        if let Some(on) = kvm {
            let _ = writeln!(out, "      kvm: {{hidden: {}}}", !on);
        }
    }
    Exported {
        text: out,
        dropped: drops.into_vec(),
    }
}

fn sub_states(
    config: &HvConfig,
    subs: &[(&'static str, Enlightenment)],
) -> Vec<(&'static str, bool)> {
    subs.iter()
        .filter_map(|(n, f)| config.state(*f).map(|on| (*n, on)))
        .collect()
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}
