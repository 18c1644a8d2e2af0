//! The ELF payload loader (README "Payload contract"): header and program-header validation,
//! segment placement against the payload area, then the copy into guest RAM.
//!
//! Input: one byte for the vCPU count, then the ELF image. Checked: no panic; what `check`
//! accepts, `load` loads, and what it refuses, `load` refuses too.
#![no_main]

use std::sync::OnceLock;

use hvkvm::boot::payload;
use hvkvm::memory::GuestMemory;
use libfuzzer_sys::fuzz_target;

const RAM_MIB: u64 = 16;

fn guest() -> &'static GuestMemory {
    static MEM: OnceLock<GuestMemory> = OnceLock::new();
    MEM.get_or_init(|| hvkvm::memory::allocate(RAM_MIB).expect("guest RAM"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&cpus, image)) = data.split_first() else {
        return;
    };
    let cpus = u32::from(cpus % 8) + 1;
    let checked = payload::check(image, RAM_MIB << 20, cpus);
    let loaded = payload::load(guest(), RAM_MIB << 20, cpus, image, "fuzz");
    assert_eq!(
        checked.is_ok(),
        loaded.is_ok(),
        "check and load disagree: {checked:?} vs {:?}",
        loaded.as_ref().map(|_| ())
    );
    if let Ok(plan) = loaded {
        assert_eq!(plan.vcpus.len(), cpus as usize);
    }
});
