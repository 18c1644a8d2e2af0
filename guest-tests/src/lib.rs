//! Host-side support for hvkvm's guest tests.
//!
//! The guest payloads (`guest-tests/guest/src/bin/*.rs`) are compiled by this crate's build script;
//! [`guest_binary`] finds the resulting ELF files.

use std::path::{Path, PathBuf};

/// Directory holding the compiled guest payloads, set by `build.rs`.
pub const GUEST_DIR: &str = env!("HVKVM_GUEST_DIR");

/// The ELF file of the guest payload `name` (the file stem of `guest/src/bin/<name>.rs`).
pub fn guest_binary(name: &str) -> PathBuf {
    Path::new(GUEST_DIR).join(name)
}
