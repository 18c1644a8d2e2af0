//! A machine-wide lock for runs that keep every host core busy for minutes: the emulated Intel
//! host (Bochs saturates one core) and the 2-vCPU Linux boot. On the 2-core hosts that emulate
//! guest kernel code, a 2-vCPU guest livelocked in stop_machine() when more vCPU threads than
//! cores were busy; Bochs beside a 1-vCPU guest was fine. So those two runs take this lock and
//! never overlap, while 1-vCPU guests and the short payload tests run beside either.
//!
//! scripts/intel-host.sh takes the same lock with flock(1); both honour `HVKVM_CORES_LOCK`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// The lock file unless `HVKVM_CORES_LOCK` names another (the same default as the script's).
pub const DEFAULT_PATH: &str = "/tmp/hvkvm-cores.lock";

/// The lock file in use.
pub fn lock_path() -> PathBuf {
    std::env::var_os("HVKVM_CORES_LOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// Held while alive; dropping it (closing the file) releases the lock.
#[derive(Debug)]
pub struct AllCores {
    _file: File,
}

/// Waits until no other run holds every core, then holds them; says so on stderr if it has to
/// wait. `what` names the waiting run in that message.
pub fn hold_all_cores(what: &str) -> io::Result<AllCores> {
    let path = lock_path();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    if !flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
        eprintln!(
            "{what}: waiting for {} (the emulated Intel host or another run that needs every \
             core holds it)",
            path.display()
        );
        flock(&file, libc::LOCK_EX)?;
    }
    Ok(AllCores { _file: file })
}

/// flock(2); `Ok(false)` when LOCK_NB found the lock taken.
#[allow(unsafe_code)]
fn flock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock takes a file descriptor that `file` keeps open for the whole call, and
        // an integer; it touches no memory of ours.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_excludes_a_second_holder_until_dropped() {
        let path = std::env::temp_dir().join(format!("hvkvm-cores-test-{}", std::process::id()));
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let (a, b) = (open(), open());
        assert!(flock(&a, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        assert!(!flock(&b, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        drop(a);
        assert!(flock(&b, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        std::fs::remove_file(&path).unwrap();
    }
}
