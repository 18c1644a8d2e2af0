//! Snapshot and restore of a 1 GiB guest: time and size, idle (sparse) and with 768 MiB
//! touched. Prints one line per case; run it alone (`flock /tmp/hvkvm-heavy.lock cargo bench
//! --bench snapshot`), it writes up to ~1 GiB to the temporary directory.
//!
//! The guest (`snapshot_fill`) fills N MiB at CPL3, makes a ucall SYNC and spins; the VM pauses
//! at the SYNC, the snapshot is taken, the VM dropped, and the snapshot restored into a new VM
//! (restore time: from opening the snapshot to a VM ready to run, RAM read and verified).

use std::time::{Duration, Instant};

use hvkvm::cpu::CpuidEntry;
use hvkvm::devices::serial::CaptureBuffer;
use hvkvm::snapshot::{SnapshotKind, SnapshotReader};
use hvkvm::vm::{BootSource, RestoreParams, RunEvent, StopReason, Vm, VmConfig};

const GUEST: &str = env!("HVKVM_SNAPSHOT_FILL_ELF");
const RAM_MIB: u64 = 1024;

fn fail(what: &str) -> ! {
    eprintln!("snapshot bench: {what}");
    std::process::exit(1)
}

fn case(touched_mib: u32) {
    let image = std::fs::read(GUEST).unwrap_or_else(|e| fail(&format!("{GUEST}: {e}")));
    let mut config = VmConfig::new(BootSource::Payload {
        image,
        name: "snapshot_fill".into(),
    });
    config.memory_mib = RAM_MIB;
    config.timeout = Some(Duration::from_secs(300));
    config.serial = Box::new(CaptureBuffer::default());
    config.cpuid_overrides.push(CpuidEntry {
        function: 0x4000_00f0,
        index: 0,
        eax: touched_mib,
        ebx: 0,
        ecx: 0,
        edx: 0,
    });
    let vm = Vm::new(config).unwrap_or_else(|e| fail(&hvkvm::cli::error_chain(&e)));
    vm.control().set_pause_on_sync(true);
    let running = vm.start().unwrap_or_else(|e| fail(&e.to_string()));
    if running.wait_event(Some(Duration::from_secs(240))) != RunEvent::Paused {
        fail("the guest did not reach its SYNC");
    }
    let handle = running.handle();
    if !handle.pause() {
        fail("the vCPUs did not park");
    }
    let dir = std::env::temp_dir().join(format!("hvkvm-bench-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let info = handle
        .snapshot(&dir, SnapshotKind::SameHost)
        .unwrap_or_else(|e| fail(&hvkvm::cli::error_chain(&e)));
    handle.stop(StopReason::PowerOff);
    drop(running.finish());

    let t = Instant::now();
    let reader = SnapshotReader::open(&dir).unwrap_or_else(|e| fail(&e.to_string()));
    let vm = Vm::restore(
        &reader,
        RestoreParams::new(Box::new(CaptureBuffer::default())),
    )
    .unwrap_or_else(|e| fail(&hvkvm::cli::error_chain(&e)));
    let restore = t.elapsed();
    let running = vm.start().unwrap_or_else(|e| fail(&e.to_string()));
    running.handle().stop(StopReason::PowerOff);
    drop(running.finish());
    println!(
        "snapshot 1 GiB guest, {touched_mib:>4} MiB touched: snapshot {:>7.0} ms, restore {:>7.0} \
         ms, {:>7} non-zero pages, {:>7.1} MiB on disk (RAM file logical size {} MiB)",
        info.elapsed_ms,
        restore.as_secs_f64() * 1000.0,
        info.ram_nonzero_pages,
        info.disk_bytes as f64 / (1 << 20) as f64,
        info.ram_bytes >> 20
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("SKIP: /dev/kvm is not usable");
        return;
    }
    for mib in [0, 768] {
        case(mib);
    }
}
