//! libvirt domain XML (libvirt.org/formatdomain.html#hypervisor-features):
//! `<features><hyperv mode='custom'>` children, `<features><kvm>`, the `hypervclock` and `tsc`
//! timers under `<clock>`, and `<devices><panic model='hyperv'/>` for hv-crash.
//! Import accepts a whole `<domain>`, a `<features>` element or a bare `<hyperv>` element.

use std::fmt::Write as _;

use roxmltree::{Document, Node};

use crate::config::{parse_number, HvConfig};
use crate::flags::{Enlightenment as E, Enlightenment, FlagKind};
use crate::formats::{DropList, Exported, FormatError, Imported};
use crate::profiles::Profile;
use crate::version::Version;

const fn v(major: u16, minor: u16) -> Version {
    Version::new(major, minor)
}

/// libvirt 8.0.0: `<hyperv mode=...>` (custom and passthrough).
pub const MODE_SINCE: Version = v(8, 0);
use crate::request::HvRequest;

/// `<hyperv>` children, their flags (QEMU flag ↔ libvirt element, reference §5) and the
/// libvirt release that added each (libvirt's formatdomain documentation; checked against the
/// schemas of Debian's libvirt 7.0.0, 9.0.0, 11.3.0 and 12.9.0).
pub const HYPERV_ELEMENTS: &[(&str, Enlightenment, Version)] = &[
    ("relaxed", E::Relaxed, v(1, 0)),
    ("vapic", E::Vapic, v(1, 1)),
    ("spinlocks", E::Spinlocks, v(1, 1)),
    ("vpindex", E::Vpindex, v(1, 3)),
    ("runtime", E::Runtime, v(1, 3)),
    ("synic", E::Synic, v(1, 3)),
    ("stimer", E::Stimer, v(1, 3)),
    ("reset", E::Reset, v(1, 3)),
    ("vendor_id", E::VendorId, v(1, 3)),
    ("frequencies", E::Frequencies, v(4, 7)),
    ("reenlightenment", E::Reenlightenment, v(4, 7)),
    ("tlbflush", E::Tlbflush, v(4, 7)),
    ("ipi", E::Ipi, v(4, 10)),
    ("evmcs", E::Evmcs, v(4, 10)),
    ("avic", E::Avic, v(8, 10)),
    ("emsr_bitmap", E::EmsrBitmap, v(10, 7)),
    ("xmm_input", E::XmmInput, v(10, 7)),
];

/// Sub-elements: `<stimer><direct/>` and `<tlbflush><direct/><extended/>`, with their
/// parent's flag and the libvirt release that added them.
pub const SUB_ELEMENTS: &[(Enlightenment, &str, Enlightenment, Version)] = &[
    (E::Stimer, "direct", E::StimerDirect, v(5, 7)),
    (E::Tlbflush, "direct", E::TlbflushDirect, v(11, 0)),
    (E::Tlbflush, "extended", E::TlbflushExt, v(11, 0)),
];

/// Which states of a `<kvm>` child libvirt passes to QEMU. Seen with `virsh domxml-to-native`
/// on libvirt 9.0: it writes `kvm-hint-dedicated=on` and `kvm-poll-control=on` but never
/// `=off`, and `kvm-pv-ipi=off` but never `=on`. A state libvirt does not pass is left to the
/// CPU model (with host-passthrough, KVM features are on where KVM has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmWrites {
    /// Only "on" reaches QEMU, and QEMU's default is off: "off" is still exact.
    OnlyOnDefaultOff,
    /// Only "on" reaches QEMU: "off" cannot be pinned.
    OnlyOn,
    /// Only "off" reaches QEMU: "on" cannot be pinned.
    OnlyOff,
}

/// `<kvm>` children libvirt knows, with their libvirt release and what libvirt passes on;
/// `hidden` (1.2.8) is inverted (`hidden on` = `kvm=off`).
pub const KVM_ELEMENTS: &[(&str, Enlightenment, Version, KvmWrites)] = &[
    (
        "hint-dedicated",
        E::KvmHintDedicated,
        v(5, 7),
        KvmWrites::OnlyOnDefaultOff,
    ),
    (
        "poll-control",
        E::KvmPollControl,
        v(6, 10),
        KvmWrites::OnlyOn,
    ),
    ("pv-ipi", E::KvmPvIpi, v(7, 10), KvmWrites::OnlyOff),
];

/// Reads libvirt XML.
pub fn import(text: &str) -> Result<Imported, FormatError> {
    let doc = Document::parse(text).map_err(FormatError::Xml)?;
    let root = doc.root_element();
    let mut notes = Vec::new();
    let mut config = HvConfig::new();
    let mut profile = None;
    let mut found = false;

    let (features, domain) = match root.tag_name().name() {
        "domain" => (child(root, "features"), Some(root)),
        "features" => (Some(root), None),
        "hyperv" => (None, None),
        other => {
            return Err(FormatError::Structure(format!(
                "expected a libvirt <domain>, <features> or <hyperv> element, found <{other}>"
            )))
        }
    };
    let hyperv = if root.has_tag_name("hyperv") {
        Some(root)
    } else {
        features.and_then(|f| child(f, "hyperv"))
    };
    if let Some(hv) = hyperv {
        found = true;
        match hv.attribute("mode").unwrap_or("custom") {
            "custom" => {}
            "passthrough" => config
                .enable(E::Passthrough)
                .map_err(FormatError::setting(at(hv)))?,
            "host-model" => {
                profile = Some(Profile::Host);
                notes.push("mode='host-model' maps to hvkvm's profile 'host'".into());
            }
            other => {
                return Err(FormatError::Structure(format!(
                    "{}: unknown <hyperv mode='{other}'>; libvirt knows custom, passthrough and \
                     host-model",
                    at(hv)
                )))
            }
        }
        import_hyperv(hv, &mut config)?;
    }
    if let Some(kvm) = features.and_then(|f| child(f, "kvm")) {
        found = true;
        import_kvm(kvm, &mut config, &mut notes)?;
    }
    if let Some(clock) = domain.and_then(|d| child(d, "clock")) {
        for timer in clock.children().filter(|n| n.has_tag_name("timer")) {
            match timer.attribute("name") {
                Some("hypervclock") => {
                    found = true;
                    let on = switch(timer, "present", "yes")?;
                    set(&mut config, E::Time, on, timer)?;
                }
                Some("tsc") => {
                    if let Some(f) = timer.attribute("frequency") {
                        let hz = parse_number(f).ok_or_else(|| {
                            FormatError::Structure(format!(
                                "{}: frequency='{f}' is not a number of Hz",
                                at(timer)
                            ))
                        })?;
                        config
                            .set_tsc_frequency(hz)
                            .map_err(FormatError::setting(at(timer)))?;
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(devices) = domain.and_then(|d| child(d, "devices")) {
        if devices
            .children()
            .any(|n| n.has_tag_name("panic") && n.attribute("model") == Some("hyperv"))
        {
            found = true;
            config
                .enable(E::Crash)
                .map_err(FormatError::setting("<panic model='hyperv'>"))?;
        }
    }
    if !found {
        return Err(FormatError::Structure(
            "no Hyper-V settings found: expected <features><hyperv>, <features><kvm>, a \
             hypervclock timer or <panic model='hyperv'/>"
                .into(),
        ));
    }
    Ok(Imported {
        request: HvRequest {
            profile,
            overrides: config,
        },
        notes,
    })
}

fn import_hyperv(hv: Node, config: &mut HvConfig) -> Result<(), FormatError> {
    for el in hv.children().filter(Node::is_element) {
        let name = el.tag_name().name();
        let Some(&(_, flag, _)) = HYPERV_ELEMENTS.iter().find(|(n, _, _)| *n == name) else {
            let known: Vec<&str> = HYPERV_ELEMENTS.iter().map(|(n, _, _)| *n).collect();
            return Err(FormatError::Structure(format!(
                "{}: unknown libvirt Hyper-V feature <{name}>; known: {}",
                at(el),
                known.join(", ")
            )));
        };
        let on = switch(el, "state", "on")?;
        match (flag, on) {
            (E::Spinlocks, true) => {
                let retries = el.attribute("retries").ok_or_else(|| {
                    FormatError::Structure(format!(
                        "{}: <spinlocks state='on'> needs retries='N'",
                        at(el)
                    ))
                })?;
                config
                    .apply_text(flag, Some(retries))
                    .map_err(FormatError::setting(at(el)))?;
            }
            (E::VendorId, true) => {
                let value = el.attribute("value").ok_or_else(|| {
                    FormatError::Structure(format!(
                        "{}: <vendor_id state='on'> needs value='...'",
                        at(el)
                    ))
                })?;
                config
                    .apply_text(flag, Some(value))
                    .map_err(FormatError::setting(at(el)))?;
            }
            _ => set(config, flag, on, el)?,
        }
        for c in el.children().filter(Node::is_element) {
            let Some(&(_, _, sub_flag, _)) = SUB_ELEMENTS
                .iter()
                .find(|(parent, n, _, _)| *parent == flag && c.has_tag_name(*n))
            else {
                return Err(FormatError::Structure(format!(
                    "{}: unexpected <{}> inside <{name}>",
                    at(c),
                    c.tag_name().name()
                )));
            };
            let on = switch(c, "state", "on")?;
            set(config, sub_flag, on, c)?;
        }
    }
    Ok(())
}

fn import_kvm(
    kvm: Node,
    config: &mut HvConfig,
    notes: &mut Vec<String>,
) -> Result<(), FormatError> {
    for el in kvm.children().filter(Node::is_element) {
        let name = el.tag_name().name();
        let on = switch(el, "state", "on")?;
        if name == "hidden" {
            set(config, E::Kvm, !on, el)?;
        } else if let Some(&(_, flag, _, _)) = KVM_ELEMENTS.iter().find(|(n, _, _, _)| *n == name) {
            set(config, flag, on, el)?;
        } else {
            notes.push(format!(
                "<kvm><{name}> ignored (not a Hyper-V or KVM CPUID setting)"
            ));
        }
    }
    Ok(())
}

fn set(config: &mut HvConfig, flag: Enlightenment, on: bool, el: Node) -> Result<(), FormatError> {
    if on {
        config.enable(flag).map_err(FormatError::setting(at(el)))
    } else {
        config.disable(flag);
        Ok(())
    }
}

/// Reads an on/off attribute (`on`/`off` or `yes`/`no`); absent means on.
fn switch(el: Node, attr: &str, on_word: &str) -> Result<bool, FormatError> {
    match el.attribute(attr) {
        None => Ok(true),
        Some(v) if v == on_word || v == "on" || v == "yes" => Ok(true),
        Some("off" | "no") => Ok(false),
        Some(v) => Err(FormatError::Structure(format!(
            "{}: {attr}='{v}' must be {on_word} or {}",
            at(el),
            if on_word == "yes" { "no" } else { "off" }
        ))),
    }
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name(name))
}

fn at(el: Node) -> String {
    let pos = el.document().text_pos_at(el.range().start);
    format!("<{}> (line {})", el.tag_name().name(), pos.row)
}

/// The settings libvirt `version` has elements for, and what it lacks.
fn for_version(config: &HvConfig, version: Version, drops: &mut DropList) -> HvConfig {
    let mut kept = config.clone();
    // No "--" here: the reason also goes into an XML comment.
    let workaround = "pass it with <qemu:commandline> (-cpu ...,flag) or export for a newer \
                      libvirt";
    let mut too_new = |flag: Enlightenment, element: String, since: Version, hv: bool| {
        if let (Some(on), true) = (config.state(flag), version < since) {
            kept.forget(flag);
            // Hyper-V flags are off unless asked for; a KVM feature follows the CPU model.
            drops.too_new(
                flag,
                on,
                &format!(
                    "libvirt {version} has no {element} (added in libvirt {since}); {workaround}"
                ),
                hv,
            );
        }
    };
    for &(name, flag, since) in HYPERV_ELEMENTS {
        too_new(flag, format!("<hyperv><{name}> element"), since, true);
    }
    for &(parent, name, flag, since) in SUB_ELEMENTS {
        let parent = HYPERV_ELEMENTS
            .iter()
            .find(|(_, f, _)| *f == parent)
            .map_or("?", |(n, _, _)| *n);
        too_new(flag, format!("<{parent}><{name}> element"), since, true);
    }
    for &(name, flag, since, _) in KVM_ELEMENTS {
        too_new(flag, format!("<kvm><{name}> element"), since, false);
    }
    for &(name, flag, _, writes) in KVM_ELEMENTS {
        let qemu = flag.name();
        let reason = match (kept.state(flag), writes) {
            (Some(false), KvmWrites::OnlyOn) => format!(
                "libvirt passes <kvm><{name}> to QEMU only when on, so {qemu}=off cannot be \
                 pinned: the CPU model decides (with host-passthrough it is on where KVM has it)"
            ),
            (Some(true), KvmWrites::OnlyOff) => format!(
                "libvirt passes <kvm><{name}> to QEMU only when off, so {qemu}=on cannot be \
                 pinned: the CPU model decides (with host-passthrough it is on where KVM has it)"
            ),
            _ => continue,
        };
        kept.forget(flag);
        drops.add(flag, &reason);
    }
    if config.state(E::Passthrough) == Some(true) && version < MODE_SINCE {
        kept.forget(E::Passthrough);
        drops.add(
            E::Passthrough,
            &format!(
                "libvirt {version} has no <hyperv mode='passthrough'> (added in libvirt \
                 {MODE_SINCE}); list the flags instead, or {workaround}"
            ),
        );
    }
    kept
}

/// Writes a `<domain>` skeleton holding the Hyper-V parts for libvirt `version`; copy its
/// children into a domain. Elements that release lacks are left out and listed in `dropped`.
pub fn export(config: &HvConfig, version: Version) -> Exported {
    let mut drops = DropList::default();
    let config = &for_version(config, version, &mut drops);
    let mut hv = String::new();
    let state = |on: bool| if on { "on" } else { "off" };
    for &(name, flag, _) in HYPERV_ELEMENTS {
        let Some(on) = config.state(flag) else {
            // A sub-feature may be mentioned without its parent.
            if let Some(inner) = sub_elements(config, flag) {
                let _ = writeln!(hv, "      <{name} state='off'>\n{inner}      </{name}>");
            }
            continue;
        };
        let attrs = match (flag, on) {
            (E::Spinlocks, true) => format!(" retries='{}'", config.spinlocks().unwrap_or(0x1FFF)),
            (E::VendorId, true) => format!(
                " value='{}'",
                escape(config.vendor_id().map_or("", |v| v.as_str()))
            ),
            _ => String::new(),
        };
        match sub_elements(config, flag) {
            Some(inner) => {
                let _ = writeln!(
                    hv,
                    "      <{name} state='{}'{attrs}>\n{inner}      </{name}>",
                    state(on)
                );
            }
            None => {
                let _ = writeln!(hv, "      <{name} state='{}'{attrs}/>", state(on));
            }
        }
    }
    let mut kvm = String::new();
    if let Some(on) = config.state(E::Kvm) {
        let _ = writeln!(kvm, "      <hidden state='{}'/>", state(!on));
    }
    for &(name, flag, _, _) in KVM_ELEMENTS {
        if let Some(on) = config.state(flag) {
            let _ = writeln!(kvm, "      <{name} state='{}'/>", state(on));
        }
    }
    for (flag, _) in config.iter() {
        let reason = match flag {
            E::Crash | E::Time | E::Passthrough | E::Kvm => continue,
            E::Syndbg | E::NoNonarchCoresharing | E::EnforceCpuid => {
                "libvirt has no element; pass it with <qemu:commandline> -cpu ...,flag"
            }
            f if f.kind() == FlagKind::Identity && f != E::VendorId => {
                "libvirt has no element for hv-version-id-*"
            }
            f if f.kind() == FlagKind::KvmParavirt
                && !KVM_ELEMENTS.iter().any(|(_, k, _, _)| *k == f) =>
            {
                "libvirt has no <kvm> element; the CPU model decides it"
            }
            _ => continue,
        };
        drops.add(flag, reason);
    }

    let mut out = String::from("<domain type='kvm'>\n");
    out.push_str(&drops.comments("  <!-- ", " -->"));
    out.push_str("  <features>\n");
    let mode = match (
        version >= MODE_SINCE,
        config.state(E::Passthrough) == Some(true),
    ) {
        (false, _) => String::new(),
        (true, true) => " mode='passthrough'".to_string(),
        (true, false) => " mode='custom'".to_string(),
    };
    if hv.is_empty() {
        let _ = writeln!(out, "    <hyperv{mode}/>");
    } else {
        let _ = write!(out, "    <hyperv{mode}>\n{hv}    </hyperv>\n");
    }
    if !kvm.is_empty() {
        let _ = write!(out, "    <kvm>\n{kvm}    </kvm>\n");
    }
    out.push_str("  </features>\n");
    let time = config.state(E::Time);
    if time.is_some() || config.tsc_frequency_hz.is_some() {
        // libvirt's schema requires an offset; keep your domain's own (Windows guests usually
        // run with localtime), only the timers below are hvkvm's.
        out.push_str("  <clock offset='utc'>\n");
        if let Some(on) = time {
            let _ = writeln!(
                out,
                "    <timer name='hypervclock' present='{}'/>",
                if on { "yes" } else { "no" }
            );
        }
        if let Some(hz) = config.tsc_frequency_hz {
            let _ = writeln!(out, "    <timer name='tsc' frequency='{hz}'/>");
        }
        out.push_str("  </clock>\n");
    }
    if config.state(E::Crash) == Some(true) {
        out.push_str("  <devices>\n    <panic model='hyperv'/>\n  </devices>\n");
    }
    out.push_str("</domain>\n");
    Exported {
        text: out,
        dropped: drops.into_vec(),
    }
}

fn sub_elements(config: &HvConfig, flag: Enlightenment) -> Option<String> {
    let inner: String = SUB_ELEMENTS
        .iter()
        .filter(|(parent, _, _, _)| *parent == flag)
        .filter_map(|(_, name, f, _)| {
            config.state(*f).map(|on| {
                format!(
                    "        <{name} state='{}'/>\n",
                    if on { "on" } else { "off" }
                )
            })
        })
        .collect();
    (!inner.is_empty()).then_some(inner)
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '\'' => "&apos;".to_string(),
            '"' => "&quot;".to_string(),
            c => c.to_string(),
        })
        .collect()
}
