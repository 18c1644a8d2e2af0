//! Guest RAM to and from a snapshot's sparse RAM file.
//!
//! The file holds every RAM region in address order, back to back (region *i* starts at the
//! sum of the earlier regions' sizes). Only non-zero 4 KiB pages are written; the rest are
//! holes, so an idle 1 GiB guest takes a few MiB of disk. The checksum covers the non-zero
//! pages only: SHA-256 over `page number (u64 LE) || page bytes` for each, in file order. It
//! depends on the contents alone, not on how the file system stores holes, and a restore reads
//! only the file's data extents (SEEK_DATA/SEEK_HOLE), so a sparse guest restores as fast as
//! its data.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use sha2::{Digest, Sha256};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::GuestMemory;

const PAGE: usize = 4096;
/// Bytes copied per step.
const CHUNK: usize = 2 << 20;

/// What a RAM file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamDigest {
    /// SHA-256 of the non-zero pages (module doc).
    pub sha256: [u8; 32],
    /// How many pages are non-zero.
    pub nonzero_pages: u64,
    /// The file's logical size (all of guest RAM).
    pub size: u64,
}

/// Total bytes of guest RAM.
pub fn ram_size(mem: &GuestMemory) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: every bit pattern is a valid u64, and align_to keeps the middle slice
        // aligned and inside `page`.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Writes all of `mem` into `file` (which must be empty), leaving zero pages as holes.
pub fn save(mem: &GuestMemory, file: &File) -> io::Result<RamDigest> {
    let mut hash = Sha256::new();
    let mut nonzero = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut file_offset = 0u64;
    for region in mem.iter() {
        let start = region.start_addr().0;
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            mem.read_slice(chunk, GuestAddress(start + done))
                .map_err(|e| io::Error::other(format!("cannot read guest RAM: {e}")))?;
            // Write runs of consecutive non-zero pages with one call each.
            let mut run: Option<usize> = None;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if is_zero(page) {
                    if let Some(first) = run.take() {
                        let off = file_offset + done + (first * PAGE) as u64;
                        file.write_all_at(&chunk[first * PAGE..i * PAGE], off)?;
                    }
                    continue;
                }
                let page_no = (file_offset + done) / PAGE as u64 + i as u64;
                hash.update(page_no.to_le_bytes());
                hash.update(page);
                nonzero += 1;
                run.get_or_insert(i);
            }
            if let Some(first) = run {
                let off = file_offset + done + (first * PAGE) as u64;
                file.write_all_at(&chunk[first * PAGE..], off)?;
            }
            done += n as u64;
        }
        file_offset += len;
    }
    file.set_len(file_offset)?;
    Ok(RamDigest {
        sha256: hash.finalize().into(),
        nonzero_pages: nonzero,
        size: file_offset,
    })
}

/// Fills freshly allocated (all-zero) `mem` from `file`, reading only its data extents;
/// returns the digest of what it read, for the caller to compare with the manifest. The file
/// must be exactly as large as `mem`.
pub fn load(mem: &GuestMemory, file: &File) -> io::Result<RamDigest> {
    let size = ram_size(mem);
    let len = file.metadata()?.len();
    if len != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the RAM file has {len} bytes, the guest has {size}"),
        ));
    }
    // Region i covers file offsets [offsets[i], offsets[i] + len) at guest address start.
    let regions: Vec<(u64, u64, u64)> = {
        let mut off = 0;
        mem.iter()
            .map(|r| {
                let entry = (off, r.len(), r.start_addr().0);
                off += r.len();
                entry
            })
            .collect()
    };
    let mut hash = Sha256::new();
    let mut nonzero = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for (ext_start, ext_end) in data_extents(file, len)? {
        // Page-align the extent (holes are page-granular on every file system hvkvm writes
        // to, but the checksum works on whole pages whatever the file system reports).
        let mut pos = ext_start - ext_start % PAGE as u64;
        let end = ext_end.div_ceil(PAGE as u64) * PAGE as u64;
        let end = end.min(len);
        while pos < end {
            let n = (end - pos).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            file.read_exact_at(chunk, pos)?;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                if is_zero(page) {
                    continue;
                }
                let off = pos + (i * PAGE) as u64;
                hash.update((off / PAGE as u64).to_le_bytes());
                hash.update(page);
                nonzero += 1;
                let Some(&(r_off, _, gpa)) = regions
                    .iter()
                    .find(|(r_off, r_len, _)| off >= *r_off && off < r_off + r_len)
                else {
                    continue;
                };
                mem.write_slice(page, GuestAddress(gpa + (off - r_off)))
                    .map_err(|e| io::Error::other(format!("cannot write guest RAM: {e}")))?;
            }
            pos += n as u64;
        }
    }
    Ok(RamDigest {
        sha256: hash.finalize().into(),
        nonzero_pages: nonzero,
        size: len,
    })
}

/// The `[start, end)` ranges of `file` that hold data (SEEK_DATA/SEEK_HOLE), merged and in
/// order; the whole file where the file system cannot tell.
pub fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: lseek on a file descriptor owned by `file`, which outlives the call; it
        // moves only the file position and returns a plain integer.
        let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // No data at or after `offset`.
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    };
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            // EINVAL: the file system does not support SEEK_DATA; read everything.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(0, len)]),
            Err(e) => return Err(e),
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if hole <= data {
            break;
        }
        out.push((data, hole));
        pos = hole;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("hvkvm-ram-{name}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    #[test]
    fn sparse_round_trip_keeps_every_byte() {
        let mem = crate::memory::allocate(16).unwrap();
        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0xffu8, GuestAddress((16 << 20) - 1)).unwrap();
        mem.write_slice(&[7u8; 3 * PAGE], GuestAddress(0x40_0000))
            .unwrap();
        let (path, file) = temp("rt");
        let saved = save(&mem, &file).unwrap();
        assert_eq!(saved.nonzero_pages, 5);
        assert_eq!(saved.size, 16 << 20);
        let on_disk = std::fs::metadata(&path).unwrap();
        assert_eq!(on_disk.len(), 16 << 20);
        let extents = data_extents(&file, on_disk.len()).unwrap();
        assert!(!extents.is_empty());
        let fresh = crate::memory::allocate(16).unwrap();
        let loaded = load(&fresh, &file).unwrap();
        assert_eq!(loaded, saved);
        let v: u64 = fresh.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(v, 0x1122_3344_5566_7788);
        let b: u8 = fresh.read_obj(GuestAddress((16 << 20) - 1)).unwrap();
        assert_eq!(b, 0xff);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_changed_byte_changes_the_digest_and_a_wrong_size_is_refused() {
        let mem = crate::memory::allocate(16).unwrap();
        mem.write_obj(1u64, GuestAddress(0x2000)).unwrap();
        let (path, file) = temp("flip");
        let saved = save(&mem, &file).unwrap();
        file.write_all_at(&[2], 0x2000).unwrap();
        let loaded = load(&crate::memory::allocate(16).unwrap(), &file).unwrap();
        assert_ne!(loaded.sha256, saved.sha256);
        file.set_len(8 << 20).unwrap();
        let err = load(&crate::memory::allocate(16).unwrap(), &file).unwrap_err();
        assert!(err.to_string().contains("8388608 bytes"), "{err}");
        let _ = std::fs::remove_file(path);
    }
}
