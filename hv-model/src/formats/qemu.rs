//! QEMU `-cpu` strings: `-cpu host,hv-relaxed,hv_vapic,hv-spinlocks=0x1fff,kvm=off,...`.
//! Import accepts a bare flag list, a `-cpu` value with a CPU model, or a whole command line
//! (the last `-cpu` wins, as in QEMU); non-Hyper-V CPU options are ignored with a note.

use crate::config::HvConfig;
use crate::error::ModelError;
use crate::formats::{Exported, FormatError, Imported};
use crate::parse::{parse_item, split_items, Item};
use crate::request::HvRequest;

/// Reads a QEMU `-cpu` value or command line.
pub fn import(text: &str) -> Result<Imported, FormatError> {
    let mut notes = Vec::new();
    let config = import_cpu_value(&cpu_value(text), &mut notes)?;
    Ok(Imported {
        request: HvRequest::from_config(config),
        notes,
    })
}

/// The `-cpu` argument of a command line (split like a shell does), or the text itself.
pub(crate) fn cpu_value(text: &str) -> String {
    let words = shell_words(text);
    match words
        .windows(2)
        .rev()
        .find(|w| w[0] == "-cpu" || w[0] == "--cpu")
        .map(|w| w[1].clone())
    {
        Some(value) => value,
        None if words.len() == 1 => words[0].clone(),
        None => text.trim().to_string(),
    }
}

/// Splits a command line into words: whitespace separates, '...' and "..." group, a
/// backslash escapes the next character (outside single quotes), a trailing `\` continues.
pub(crate) fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => match chars.next() {
                Some('\n') | None => {}
                Some(next) => {
                    cur.push(next);
                    in_word = true;
                }
            },
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Parses the comma list of a `-cpu` value, skipping the model and non-Hyper-V options.
pub(crate) fn import_cpu_value(
    value: &str,
    notes: &mut Vec<String>,
) -> Result<HvConfig, FormatError> {
    let mut config = HvConfig::new();
    for (i, item) in split_items(value).enumerate() {
        let location = format!("'{item}'");
        match parse_item(item) {
            Ok(Item::Flag(flag, v)) => config
                .apply_text(flag, v.as_deref())
                .map_err(FormatError::setting(location))?,
            Ok(Item::TscFrequency(hz)) => config
                .set_tsc_frequency(hz)
                .map_err(FormatError::setting(location))?,
            Err(ModelError::UnknownFlag { name, .. }) if !looks_like_hyperv(&name) => {
                if i == 0 && !item.contains('=') && !item.starts_with(['+', '-']) {
                    notes.push(format!(
                        "CPU model '{item}' ignored (not a Hyper-V setting)"
                    ));
                } else {
                    notes.push(format!("'{item}' ignored (not a Hyper-V setting)"));
                }
            }
            Err(e) => {
                return Err(FormatError::Setting {
                    location,
                    source: e,
                })
            }
        }
    }
    Ok(config)
}

fn looks_like_hyperv(name: &str) -> bool {
    let n = name.trim_start_matches(['+', '-']).to_ascii_lowercase();
    n.starts_with("hv-") || n.starts_with("hv_")
}

/// Writes the flag list to append to `-cpu MODEL,` (also valid for hvkvm's `--hv`).
pub fn export(config: &HvConfig) -> Exported {
    let mut text = config.to_hv_list();
    text.push('\n');
    Exported {
        text,
        dropped: Vec::new(),
    }
}
