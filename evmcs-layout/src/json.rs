//! JSON dump of the tables, written to any [`core::fmt::Write`] (no allocation), so the layout can
//! be diffed against another source. `examples/dump_table.rs` prints it.
//!
//! Every object sits on one line, in a stable order, so a plain `diff` of two dumps is readable.

use core::fmt::{self, Write};

use crate::clean::CleanGroup;
use crate::evmcs::HvEnlightenedVmcs;
use crate::fields::{EvmcsField, SyntheticField, FIELD_TABLE};
use crate::layout::Member;
use crate::version::{EvmcsVersionRange, KVM_CAP_HYPERV_ENLIGHTENED_VMCS, UNSUPPORTED_FIELDS};
use crate::vp_assist::VpAssistPage;

/// A JSON string; the names written here are identifiers, but escape anyway.
struct Str<'a>(&'a str);

impl fmt::Display for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// `"name"` or `null`.
struct OptStr<'a>(Option<&'a str>);

impl fmt::Display for OptStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => Str(s).fmt(f),
            None => f.write_str("null"),
        }
    }
}

fn evmcs_member(offset: usize) -> Option<&'static Member> {
    HvEnlightenedVmcs::MEMBERS
        .iter()
        .find(|m| m.offset == offset)
}

fn write_group<W: Write>(out: &mut W, group: CleanGroup) -> fmt::Result {
    write!(out, "\"clean_group\":{},\"clean_bit\":", Str(group.name()))?;
    match group.bit() {
        Some(bit) => write!(out, "{bit}"),
        None => out.write_str("null"),
    }
}

fn write_field<W: Write>(out: &mut W, f: &EvmcsField) -> fmt::Result {
    let tlfs = evmcs_member(usize::from(f.offset)).and_then(|m| m.tlfs_name);
    write!(
        out,
        "{{\"name\":{},\"tlfs_name\":{},\"vmcs_name\":{},\"encoding\":{},\"encoding_hex\":\"{:#06x}\",\
         \"offset\":{},\"offset_hex\":\"{:#05x}\",\"width\":{},\"width_class\":{},\"read_only\":{},",
        Str(f.name),
        OptStr(tlfs),
        Str(f.vmcs_name),
        f.encoding,
        f.encoding,
        f.offset,
        f.offset,
        f.size,
        Str(f.width().name()),
        f.is_read_only(),
    )?;
    write_group(out, f.group)?;
    out.write_char('}')
}

/// Writes [`FIELD_TABLE`] as a JSON array, one field object per line, in table order (grouped by
/// clean group). Keys: `name` (eVMCS member), `tlfs_name`, `vmcs_name`, `encoding`(+`_hex`),
/// `offset`(+`_hex`), `width` (bytes in the eVMCS), `width_class`, `read_only`, `clean_group`,
/// `clean_bit`.
///
/// # Errors
/// Whatever `out` returns.
pub fn write_field_table<W: Write>(out: &mut W) -> fmt::Result {
    out.write_str("[\n")?;
    for (i, f) in FIELD_TABLE.iter().enumerate() {
        out.write_str("  ")?;
        write_field(out, f)?;
        out.write_str(if i + 1 < FIELD_TABLE.len() {
            ",\n"
        } else {
            "\n"
        })?;
    }
    out.write_str("]\n")
}

fn write_layout<W: Write>(out: &mut W) -> fmt::Result {
    out.write_str("  \"evmcs_layout\": [\n")?;
    let members = HvEnlightenedVmcs::MEMBERS;
    for (i, m) in members.iter().enumerate() {
        let field = FIELD_TABLE
            .iter()
            .find(|f| usize::from(f.offset) == m.offset);
        let synthetic = SyntheticField::ALL.into_iter().find(|s| s.name() == m.name);
        let kind = match (field, synthetic) {
            (Some(_), _) => "vmcs",
            (None, Some(_)) => "synthetic",
            (None, None) => "reserved",
        };
        write!(
            out,
            "    {{\"name\":{},\"tlfs_name\":{},\"offset\":{},\"offset_hex\":\"{:#05x}\",\"size\":{},\
             \"kind\":{},\"encoding\":",
            Str(m.name),
            OptStr(m.tlfs_name),
            m.offset,
            m.offset,
            m.size,
            Str(kind),
        )?;
        match field {
            Some(f) => write!(out, "{},", f.encoding)?,
            None => out.write_str("null,")?,
        }
        match (
            field.map(|f| f.group),
            synthetic.and_then(SyntheticField::group),
        ) {
            (Some(g), _) | (None, Some(g)) => write_group(out, g)?,
            (None, None) => out.write_str("\"clean_group\":null,\"clean_bit\":null")?,
        }
        out.write_str(if i + 1 < members.len() { "},\n" } else { "}\n" })?;
    }
    out.write_str("  ],\n")
}

fn write_members<W: Write>(out: &mut W, key: &str, members: &[Member]) -> fmt::Result {
    writeln!(out, "  {}: [", Str(key))?;
    for (i, m) in members.iter().enumerate() {
        write!(
            out,
            "    {{\"name\":{},\"tlfs_name\":{},\"offset\":{},\"offset_hex\":\"{:#05x}\",\"size\":{}}}",
            Str(m.name),
            OptStr(m.tlfs_name),
            m.offset,
            m.offset,
            m.size,
        )?;
        out.write_str(if i + 1 < members.len() { ",\n" } else { "\n" })?;
    }
    out.write_str("  ],\n")
}

/// Writes one JSON object with everything this crate knows:
/// `evmcs_size`, `fields` (= [`write_field_table`]), `evmcs_layout` (every member in offset
/// order with its kind: `vmcs`, `synthetic` or `reserved`), `vp_assist_page`,
/// `unsupported_vmcs_fields`, `clean_groups` and `version_range`.
///
/// # Errors
/// Whatever `out` returns.
pub fn write_everything<W: Write>(out: &mut W) -> fmt::Result {
    writeln!(out, "{{\n  \"evmcs_size\": {},", HvEnlightenedVmcs::SIZE)?;
    out.write_str("  \"fields\": [\n")?;
    for (i, f) in FIELD_TABLE.iter().enumerate() {
        out.write_str("    ")?;
        write_field(out, f)?;
        out.write_str(if i + 1 < FIELD_TABLE.len() {
            ",\n"
        } else {
            "\n"
        })?;
    }
    out.write_str("  ],\n")?;
    write_layout(out)?;
    write_members(out, "vp_assist_page", VpAssistPage::MEMBERS)?;
    out.write_str("  \"unsupported_vmcs_fields\": [\n")?;
    for (i, u) in UNSUPPORTED_FIELDS.iter().enumerate() {
        write!(
            out,
            "    {{\"vmcs_name\":{},\"encoding\":{},\"encoding_hex\":\"{:#06x}\"}}",
            Str(u.name),
            u.encoding,
            u.encoding
        )?;
        out.write_str(if i + 1 < UNSUPPORTED_FIELDS.len() {
            ",\n"
        } else {
            "\n"
        })?;
    }
    out.write_str("  ],\n  \"clean_groups\": [\n")?;
    for (i, g) in CleanGroup::ALL_GROUPS.iter().enumerate() {
        let count = FIELD_TABLE.iter().filter(|f| f.group == *g).count();
        write!(out, "    {{")?;
        write_group(out, *g)?;
        write!(
            out,
            ",\"dirty_mask\":\"{:#06x}\",\"fields\":{count}}}",
            g.dirty_mask().bits()
        )?;
        out.write_str(if i + 1 < CleanGroup::COUNT {
            ",\n"
        } else {
            "\n"
        })?;
    }
    let v1 = EvmcsVersionRange::V1;
    write!(
        out,
        "  ],\n  \"version_range\": {{\"min\":{},\"max\":{},\"raw\":\"{:#06x}\",\"kvm_cap\":{}}}\n}}\n",
        v1.min(),
        v1.max(),
        v1.to_raw(),
        KVM_CAP_HYPERV_ENLIGHTENED_VMCS,
    )
}
