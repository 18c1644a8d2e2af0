//! Every file hvkvm reads from the user goes through [`read`] or [`read_text`]: guest payloads,
//! kernels and initrds, the hv-model configurations `hvkvm hv import` reads, `--host` JSON,
//! and (later) snapshot files.
//!
//! What they guarantee, whatever the path names:
//! - **Never blocks.** The file is opened with `O_NONBLOCK | O_NOCTTY`, so a FIFO without a
//!   writer or a terminal device returns at once (and is then refused).
//! - **Regular files only.** `fstat` on the opened descriptor (not the path, so nothing can
//!   swap the file in between) must say regular file; devices (`/dev/zero`), FIFOs, sockets
//!   and directories are refused, naming what the path is.
//! - **Bounded.** The size is checked against the role's [`Role::max_bytes`] before a byte is
//!   read (a 100 GiB sparse file is refused at once), and at most that many bytes are read
//!   even if the file grows meanwhile or lies about its size (procfs).
//! - **Named errors.** Every error names the role, the path and, for sizes, the limit, where
//!   it comes from and what to do.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The largest configuration file (QEMU, libvirt, KubeVirt, Proxmox, host JSON) accepted.
/// Real ones are a few KiB; a domain XML with long descriptions stays well below this.
pub const CONFIG_MAX_BYTES: u64 = 4 << 20;

/// What a file is for, and how large a file in that role may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// What the file is, for messages: "payload", "kernel", "host description".
    pub name: Cow<'static, str>,
    /// The most bytes a file in this role may have.
    pub max_bytes: u64,
    /// Where the limit comes from, completing "more than ...": "the guest RAM (--memory 256)".
    pub limit: Cow<'static, str>,
    /// What to do about a file over the limit.
    pub fix: Cow<'static, str>,
}

impl Role {
    /// A role with its own limit.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        max_bytes: u64,
        limit: impl Into<Cow<'static, str>>,
        fix: impl Into<Cow<'static, str>>,
    ) -> Role {
        Role {
            name: name.into(),
            max_bytes,
            limit: limit.into(),
            fix: fix.into(),
        }
    }

    /// A configuration file (JSON, XML, YAML or a text config): at most [`CONFIG_MAX_BYTES`].
    pub fn config(name: impl Into<Cow<'static, str>>) -> Role {
        Role::new(
            name,
            CONFIG_MAX_BYTES,
            "hvkvm accepts for a configuration file",
            "configurations are a few KiB; check that this is the right file",
        )
    }
}

/// What a path that is not a regular file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A character device (`/dev/zero`, a terminal).
    CharDevice,
    /// A block device (a disk).
    BlockDevice,
    /// A FIFO (named pipe), or a pipe such as `/dev/stdin` under a shell pipeline.
    Fifo,
    /// A Unix socket.
    Socket,
    /// Anything else.
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Fifo => "a FIFO (pipe)",
            FileKind::Socket => "a socket",
            FileKind::Other => "not a regular file",
        })
    }
}

/// Why an input file was not read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// open(2) failed: missing, no permission, a dangling link.
    #[error("cannot open the {role} '{}'", path.display())]
    Open {
        /// The file's role.
        role: Cow<'static, str>,
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// fstat(2) failed.
    #[error("cannot stat the {role} '{}'", path.display())]
    Stat {
        /// The file's role.
        role: Cow<'static, str>,
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A device, FIFO, socket or directory.
    #[error(
        "the {role} '{}' is {kind}, not a regular file; hvkvm reads inputs only from regular \
         files (save the data to a file first)",
        path.display()
    )]
    NotRegular {
        /// The file's role.
        role: Cow<'static, str>,
        /// The path as given.
        path: PathBuf,
        /// What it is.
        kind: FileKind,
    },
    /// Larger than the role allows (checked before reading, or while reading if it grew).
    #[error(
        "the {} '{}' is {}, more than {}: {}; {}",
        role.name,
        path.display(),
        size_text(*size, *grew),
        role.limit,
        human(role.max_bytes),
        role.fix
    )]
    TooLarge {
        /// The file's role, with its limit.
        role: Box<Role>,
        /// The path as given.
        path: PathBuf,
        /// Its size (what fstat said, or what was read when it grew).
        size: u64,
        /// Whether the file grew past the limit while being read.
        grew: bool,
    },
    /// read(2) failed.
    #[error("cannot read the {role} '{}'", path.display())]
    Read {
        /// The file's role.
        role: Cow<'static, str>,
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// [`read_text`] of a file that is not UTF-8.
    #[error(
        "the {role} '{}' is not UTF-8 text (invalid byte at offset {offset}); pass the text \
         file itself, not a binary or compressed one",
        path.display()
    )]
    NotText {
        /// The file's role.
        role: Cow<'static, str>,
        /// The path as given.
        path: PathBuf,
        /// Offset of the first invalid byte.
        offset: usize,
    },
}

impl InputError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            InputError::Open { path, .. }
            | InputError::Stat { path, .. }
            | InputError::NotRegular { path, .. }
            | InputError::TooLarge { path, .. }
            | InputError::Read { path, .. }
            | InputError::NotText { path, .. } => path,
        }
    }
}

fn size_text(size: u64, grew: bool) -> String {
    if grew {
        format!("more than {} (it grew while being read)", human(size - 1))
    } else {
        human(size)
    }
}

/// `1536` → "1.5 KiB (1536 bytes)"; small sizes stay in bytes.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let number = if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    };
    format!("{number} {} ({bytes} bytes)", UNITS[unit])
}

fn open(path: &Path, role: &Role) -> Result<(File, u64), InputError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| InputError::Open {
            role: role.name.clone(),
            path: path.to_owned(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| InputError::Stat {
        role: role.name.clone(),
        path: path.to_owned(),
        source,
    })?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            FileKind::Directory
        } else if ft.is_char_device() {
            FileKind::CharDevice
        } else if ft.is_block_device() {
            FileKind::BlockDevice
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Other
        };
        return Err(InputError::NotRegular {
            role: role.name.clone(),
            path: path.to_owned(),
            kind,
        });
    }
    Ok((file, meta.len()))
}

fn too_large(path: &Path, role: &Role, size: u64, grew: bool) -> InputError {
    InputError::TooLarge {
        role: Box::new(role.clone()),
        path: path.to_owned(),
        size,
        grew,
    }
}

/// Reads the regular file at `path`, at most `role.max_bytes` bytes of it (see the module doc).
pub fn read(path: &Path, role: &Role) -> Result<Vec<u8>, InputError> {
    let (file, size) = open(path, role)?;
    if size > role.max_bytes {
        return Err(too_large(path, role, size, false));
    }
    // `size` fits the limit; the limit plus one byte tells a file that grew past it.
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(role.max_bytes.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|source| InputError::Read {
            role: role.name.clone(),
            path: path.to_owned(),
            source,
        })?;
    if data.len() as u64 > role.max_bytes {
        return Err(too_large(path, role, data.len() as u64, true));
    }
    Ok(data)
}

/// [`read`], and the contents must be UTF-8 text.
pub fn read_text(path: &Path, role: &Role) -> Result<String, InputError> {
    let data = read(path, role)?;
    String::from_utf8(data).map_err(|e| InputError::NotText {
        role: role.name.clone(),
        path: path.to_owned(),
        offset: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "input-file-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn role(max: u64) -> Role {
        Role::new(
            "payload",
            max,
            "the guest RAM (--memory 1)",
            "raise --memory",
        )
    }

    #[test]
    fn reads_a_regular_file_within_the_limit() {
        let dir = TempDir::new();
        let p = dir.0.join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read(&p, &role(5)).unwrap(), b"hello");
        assert_eq!(read_text(&p, &role(5)).unwrap(), "hello");
    }

    #[test]
    fn one_byte_over_the_limit_is_refused_naming_file_and_limit() {
        let dir = TempDir::new();
        let p = dir.0.join("big.elf");
        std::fs::write(&p, [0u8; 6]).unwrap();
        let err = read(&p, &role(5)).unwrap_err();
        assert!(matches!(
            err,
            InputError::TooLarge {
                size: 6,
                grew: false,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("big.elf")
                && msg.contains("is 6 bytes, more than the guest RAM (--memory 1): 5 bytes; raise")
                && msg.contains("--memory"),
            "{msg}"
        );
    }

    #[test]
    fn a_huge_sparse_file_is_refused_before_reading() {
        let dir = TempDir::new();
        let p = dir.0.join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(100 << 30).unwrap();
        let start = Instant::now();
        let err = read(&p, &role(256 << 20)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        let msg = err.to_string();
        assert!(msg.contains("100 GiB") && msg.contains("256 MiB"), "{msg}");
    }

    #[test]
    fn devices_and_directories_are_refused() {
        let err = read(Path::new("/dev/zero"), &role(1 << 20)).unwrap_err();
        assert!(
            matches!(
                err,
                InputError::NotRegular {
                    kind: FileKind::CharDevice,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("'/dev/zero' is a character device"));
        let dir = TempDir::new();
        let err = read(&dir.0, &role(1 << 20)).unwrap_err();
        assert!(matches!(
            err,
            InputError::NotRegular {
                kind: FileKind::Directory,
                ..
            }
        ));
    }

    #[test]
    fn a_fifo_without_writer_is_refused_at_once() {
        let dir = TempDir::new();
        let p = dir.0.join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&p).status();
        if !status.is_ok_and(|s| s.success()) {
            println!("SKIP: mkfifo is not available");
            return;
        }
        let start = Instant::now();
        let err = read(&p, &role(1 << 20)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(
            matches!(
                err,
                InputError::NotRegular {
                    kind: FileKind::Fifo,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_files_and_binary_text_name_the_path() {
        let dir = TempDir::new();
        let p = dir.0.join("absent.json");
        let err = read_text(&p, &Role::config("host description")).unwrap_err();
        assert!(matches!(err, InputError::Open { .. }));
        assert!(
            err.to_string().contains("host description") && err.to_string().contains("absent.json")
        );
        let p = dir.0.join("bin.json");
        std::fs::write(&p, [b'{', 0xff, b'}']).unwrap();
        let err = read_text(&p, &Role::config("host description")).unwrap_err();
        assert!(
            matches!(err, InputError::NotText { offset: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn procfs_files_that_claim_size_zero_are_still_bounded() {
        // /proc files report st_size 0 but have content: the read itself must stop at the limit.
        let err = read(Path::new("/proc/self/maps"), &role(16)).unwrap_err();
        assert!(
            matches!(
                err,
                InputError::TooLarge {
                    grew: true,
                    size: 17,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("grew while being read"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(5), "5 bytes");
        assert_eq!(human(4 << 20), "4 MiB (4194304 bytes)");
        assert_eq!(human(1536), "1.5 KiB (1536 bytes)");
    }
}
