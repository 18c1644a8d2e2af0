//! The guest-test channel: a guest builds `struct Ucall { cmd: u64, args: [u64; 7] }`, puts
//! its address in RDI and executes `out 0x1000, eax`. hvkvm reads the struct from guest
//! memory. Everything in it is guest-controlled and validated here.

use crate::memory::{Bytes, GuestAddress, GuestMemory};

/// `cmd` values.
pub const UCALL_SYNC: u64 = 1;
/// A failed guest assertion.
pub const UCALL_ASSERT: u64 = 2;
/// A message for the host log.
pub const UCALL_PRINT: u64 = 3;
/// The test passed.
pub const UCALL_DONE: u64 = 4;
/// Size of the struct in guest memory.
pub const UCALL_SIZE: usize = 64;
/// Longest string hvkvm reads from a ucall.
pub const MAX_STRING: u64 = 1024;

/// A decoded ucall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ucall {
    /// Checkpoint `stage` with up to six values.
    Sync {
        /// Stage number.
        stage: u64,
        /// Values the guest reports.
        values: [u64; 6],
    },
    /// `guest_assert!` failed.
    Assert(GuestAssert),
    /// A message.
    Print(String),
    /// The guest test finished successfully.
    Done,
}

/// A failed guest assertion with its location.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestAssert {
    /// vCPU that failed.
    pub vcpu: u32,
    /// Source file in the guest program.
    pub file: String,
    /// Line.
    pub line: u64,
    /// The assertion's message.
    pub message: String,
    /// First value (e.g. left side of an equality).
    pub a: u64,
    /// Second value.
    pub b: u64,
}

impl std::fmt::Display for GuestAssert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "guest assertion failed on vCPU {} at {}:{}: {} (values {:#x}, {:#x})",
            self.vcpu, self.file, self.line, self.message, self.a, self.b
        )
    }
}

/// A malformed ucall.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UcallError {
    /// RDI does not point at 64 bytes of guest RAM.
    #[error("ucall struct at {0:#x} is not in guest RAM")]
    BadAddress(u64),
    /// A string pointer/length is invalid.
    #[error("ucall string at {addr:#x} (+{len}) is not readable guest RAM or is too long")]
    BadString {
        /// Pointer.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// Unknown command.
    #[error("unknown ucall command {0}")]
    UnknownCommand(u64),
}

fn read_string(mem: &GuestMemory, addr: u64, len: u64) -> Result<String, UcallError> {
    if len > MAX_STRING {
        return Err(UcallError::BadString { addr, len });
    }
    let mut buf = vec![0u8; len as usize];
    mem.read_slice(&mut buf, GuestAddress(addr))
        .map_err(|_| UcallError::BadString { addr, len })?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Reads and decodes the ucall at `addr`.
pub fn decode(mem: &GuestMemory, vcpu: u32, addr: u64) -> Result<Ucall, UcallError> {
    let mut raw = [0u8; UCALL_SIZE];
    mem.read_slice(&mut raw, GuestAddress(addr))
        .map_err(|_| UcallError::BadAddress(addr))?;
    let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let arg = |i: usize| word(i + 1);
    match word(0) {
        UCALL_SYNC => Ok(Ucall::Sync {
            stage: arg(0),
            values: [arg(1), arg(2), arg(3), arg(4), arg(5), arg(6)],
        }),
        UCALL_ASSERT => Ok(Ucall::Assert(GuestAssert {
            vcpu,
            file: read_string(mem, arg(0), arg(1))?,
            line: arg(2),
            message: read_string(mem, arg(3), arg(4))?,
            a: arg(5),
            b: arg(6),
        })),
        UCALL_PRINT => Ok(Ucall::Print(read_string(mem, arg(0), arg(1))?)),
        UCALL_DONE => Ok(Ucall::Done),
        other => Err(UcallError::UnknownCommand(other)),
    }
}

/// Writes reply values into `args[1..=6]` of the ucall at `addr` (after a SYNC).
pub fn write_reply(mem: &GuestMemory, addr: u64, values: &[u64; 6]) -> Result<(), UcallError> {
    for (i, v) in values.iter().enumerate() {
        mem.write_obj(*v, GuestAddress(addr + 16 + 8 * i as u64))
            .map_err(|_| UcallError::BadAddress(addr))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(mem: &GuestMemory, addr: u64, words: &[u64]) {
        for (i, w) in words.iter().enumerate() {
            mem.write_obj(*w, GuestAddress(addr + 8 * i as u64))
                .unwrap();
        }
    }

    #[test]
    fn decodes_every_command() {
        let mem = crate::memory::allocate(16).unwrap();
        mem.write_slice(b"guest.rs", GuestAddress(0x3000)).unwrap();
        mem.write_slice(b"boom", GuestAddress(0x3100)).unwrap();
        put(&mem, 0x2000, &[UCALL_SYNC, 7, 1, 2, 3, 4, 5, 6]);
        assert_eq!(
            decode(&mem, 0, 0x2000).unwrap(),
            Ucall::Sync {
                stage: 7,
                values: [1, 2, 3, 4, 5, 6]
            }
        );
        put(
            &mem,
            0x2000,
            &[UCALL_ASSERT, 0x3000, 8, 42, 0x3100, 4, 1, 2],
        );
        let Ucall::Assert(a) = decode(&mem, 1, 0x2000).unwrap() else {
            panic!()
        };
        assert_eq!(
            (a.file.as_str(), a.line, a.message.as_str(), a.vcpu),
            ("guest.rs", 42, "boom", 1)
        );
        put(&mem, 0x2000, &[UCALL_PRINT, 0x3100, 4]);
        assert_eq!(
            decode(&mem, 0, 0x2000).unwrap(),
            Ucall::Print("boom".into())
        );
        put(&mem, 0x2000, &[UCALL_DONE]);
        assert_eq!(decode(&mem, 0, 0x2000).unwrap(), Ucall::Done);
    }

    #[test]
    fn hostile_ucalls_are_errors() {
        let mem = crate::memory::allocate(16).unwrap();
        assert_eq!(
            decode(&mem, 0, u64::MAX - 8),
            Err(UcallError::BadAddress(u64::MAX - 8))
        );
        assert_eq!(
            decode(&mem, 0, 16 << 20),
            Err(UcallError::BadAddress(16 << 20))
        );
        put(&mem, 0x2000, &[99]);
        assert_eq!(decode(&mem, 0, 0x2000), Err(UcallError::UnknownCommand(99)));
        put(&mem, 0x2000, &[UCALL_PRINT, 0x3000, MAX_STRING + 1]);
        assert!(matches!(
            decode(&mem, 0, 0x2000),
            Err(UcallError::BadString { .. })
        ));
        put(&mem, 0x2000, &[UCALL_PRINT, (16 << 20) - 2, 8]);
        assert!(matches!(
            decode(&mem, 0, 0x2000),
            Err(UcallError::BadString { .. })
        ));
    }
}
