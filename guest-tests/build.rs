//! Builds every guest payload in `guest/src/bin/` and tells the crate where the ELF files are
//! (`HVKVM_GUEST_DIR`, read by `guest_tests::guest_binary`). A guest that does not compile, or
//! that uses an instruction KVM's emulator cannot execute, fails this build with the details.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let dir = guest_build::build_guest_payloads(None).unwrap_or_else(|e| panic!("{e}"));
    println!("cargo:rustc-env=HVKVM_GUEST_DIR={}", dir.display());
}
