//! Golden data for the layout tests, read from the tables next to this file (their headers
//! say where each column comes from): `fields.txt`, every field with an eVMCS home, and
//! `tlfs_mapping.txt`, the TLFS "Physical VMCS Encoding" table as published.

#![allow(dead_code)]

/// (encoding, eVMCS member, TLFS member name, offset, size, clean group).
pub type FieldRow = (
    u32,
    &'static str,
    Option<&'static str>,
    usize,
    usize,
    &'static str,
);

/// (encoding, TLFS name, size, clean group).
pub type TlfsRow = (u32, &'static str, usize, &'static str);

/// The data lines of a table: `#` comments and blank lines skipped, columns split on
/// whitespace, each line checked to have `columns` of them.
fn rows(
    file: &'static str,
    text: &'static str,
    columns: usize,
) -> impl Iterator<Item = Vec<&'static str>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(move |(i, l)| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), columns, "{file}:{}: {l:?}", i + 1);
            cols
        })
}

fn number(file: &str, s: &str) -> usize {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => usize::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("{file}: bad number {s:?}: {e}"))
}

/// Every field with an eVMCS home, in offset order.
pub fn fields() -> Vec<FieldRow> {
    const FILE: &str = "golden/fields.txt";
    rows(FILE, include_str!("fields.txt"), 6)
        .map(|c| {
            (
                number(FILE, c[0]) as u32,
                c[1],
                (c[2] != "-").then_some(c[2]),
                number(FILE, c[3]),
                number(FILE, c[4]),
                c[5],
            )
        })
        .collect()
}

/// The TLFS "Physical VMCS Encoding" table as published. Its 0x6C16 row is a typo in the
/// TLFS (see the file); the test treats that row specially.
pub fn tlfs_mapping() -> Vec<TlfsRow> {
    const FILE: &str = "golden/tlfs_mapping.txt";
    rows(FILE, include_str!("tlfs_mapping.txt"), 4)
        .map(|c| (number(FILE, c[0]) as u32, c[1], number(FILE, c[2]), c[3]))
        .collect()
}
