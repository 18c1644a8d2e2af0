//! Prints the eVMCS v1 field table as a JSON array, one field per line, so it can be diffed
//! against another source:
//!
//! ```text
//! cargo run -p evmcs-layout --example dump_table            # the VMCS-encoding table
//! cargo run -p evmcs-layout --example dump_table -- --all   # one object: table, full layout,
//!                                                           # VP assist page, unsupported fields,
//!                                                           # clean groups, version range
//! ```

use std::process::ExitCode;

use evmcs_layout::json;

fn main() -> ExitCode {
    let mut all = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--all" => all = true,
            _ => {
                eprintln!("usage: dump_table [--all]");
                return ExitCode::from(2);
            }
        }
    }
    let mut out = String::new();
    let written = if all {
        json::write_everything(&mut out)
    } else {
        json::write_field_table(&mut out)
    };
    if written.is_err() {
        eprintln!("dump_table: formatting failed");
        return ExitCode::FAILURE;
    }
    print!("{out}");
    ExitCode::SUCCESS
}
