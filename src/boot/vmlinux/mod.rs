//! Extracting the uncompressed `vmlinux` ELF from a Linux x86 bzImage.
//!
//! Loading the uncompressed kernel instead of the bzImage spares the guest its own
//! decompressor, which on hosts that emulate guest kernel code (see `shared/test-host.md`) costs
//! minutes. This module is pure: no I/O, no `unsafe`, bounded memory.
//!
//! The bzImage layout it relies on (Linux `Documentation/arch/x86/boot.rst`):
//! - the real-mode setup is `setup_sects + 1` sectors of 512 bytes (`setup_sects` is the byte at
//!   0x1F1; 0 means 4), and the protected-mode code starts right after it;
//! - the boot sector ends with the flag 0xAA55 at 0x1FE, and the setup header carries `"HdrS"`
//!   at 0x202 and the boot protocol version at 0x206;
//! - from protocol 2.08 on, `payload_offset` (0x248) and `payload_length` (0x24C) locate the
//!   compressed kernel, `payload_offset` counting from the start of the protected-mode code;
//! - the kernel build appends the decompressed size as a little-endian `u32` to the compressed
//!   stream (gzip's own trailer holds the same value), so the payload's last 4 bytes are the
//!   size of the vmlinux it decompresses to.
//!
//! Supported payload compressions: gzip, xz (with the x86 BCJ filter the kernel uses), lzma,
//! lz4 (the legacy LZ4 frame format, 8 MiB blocks, that the kernel's `lz4 -l` produces) and zstd.
//! bzip2 and lzo are recognised and refused with an error that says what to do.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

/// The largest vmlinux this module will produce. Anything larger is refused, so a hostile or
/// corrupt image cannot make the VMM allocate without bound.
pub const MAX_VMLINUX_SIZE: usize = 512 << 20;

/// The largest decoder dictionary/window (xz, lzma, zstd) accepted. The kernel's own builds use
/// at most 128 MiB (`zstd -22 --ultra`); xz uses 32 MiB.
const MAX_DICT_SIZE: u64 = 256 << 20;

/// Byte offsets in the bzImage (boot sector and setup header).
const OFF_SETUP_SECTS: usize = 0x1F1;
const OFF_BOOT_FLAG: usize = 0x1FE;
const OFF_HEADER_MAGIC: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_PAYLOAD_OFFSET: usize = 0x248;
const OFF_PAYLOAD_LENGTH: usize = 0x24C;
/// The setup header fields read here end before this offset.
const SETUP_HEADER_END: usize = 0x250;

const BOOT_FLAG: u16 = 0xAA55;
const HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// Boot protocol 2.08 introduced `payload_offset`/`payload_length`.
const MIN_PROTOCOL: u16 = 0x0208;
const SECTOR_SIZE: usize = 512;

/// The legacy LZ4 frame: this magic, then blocks of `le32 compressed size` + raw LZ4 block,
/// each decompressing to at most 8 MiB. The magic may reappear between blocks.
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// `LZ4_compressBound` of a full legacy block: the largest valid compressed block size.
const LZ4_LEGACY_MAX_CBLOCK: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;

/// LZ4 cannot expand data more than about 255-fold (a 1-byte token plus length bytes of 255).
const LZ4_MAX_RATIO: usize = 256;

/// ELF constants used by [`check_vmlinux_elf`].
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const ELF64_EHDR_SIZE: usize = 64;
const ELF64_PHDR_SIZE: usize = 56;

/// A compression format the kernel build can use for the bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// `CONFIG_KERNEL_GZIP`.
    Gzip,
    /// `CONFIG_KERNEL_XZ` (xz container, usually with the x86 BCJ filter).
    Xz,
    /// `CONFIG_KERNEL_LZMA` (the legacy `.lzma` container).
    Lzma,
    /// `CONFIG_KERNEL_LZ4` (the legacy LZ4 frame format).
    Lz4,
    /// `CONFIG_KERNEL_ZSTD`.
    Zstd,
    /// `CONFIG_KERNEL_BZIP2` (recognised, not supported).
    Bzip2,
    /// `CONFIG_KERNEL_LZO` (lzop container; recognised, not supported).
    Lzo,
}

impl Compression {
    /// The format's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lzo => "lzo",
        }
    }

    /// Whether [`extract_vmlinux`] can decompress this format.
    pub fn is_supported(self) -> bool {
        !matches!(self, Compression::Bzip2 | Compression::Lzo)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a kernel image could not be turned into a vmlinux ELF.
#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    /// The file ends before the setup header does.
    #[error(
        "not a bzImage: the file is {len} bytes, too short to hold the setup header \
         (which ends at {need:#x}); pass an uncompressed vmlinux ELF or a complete bzImage"
    )]
    TooShort {
        /// The file's length.
        len: usize,
        /// The length the setup header needs.
        need: usize,
    },
    /// No 0xAA55 boot flag at 0x1FE.
    #[error(
        "not a bzImage: missing boot sector magic 0xAA55 at 0x1FE (found {found:#06x}); \
         pass an uncompressed vmlinux ELF or a bzImage"
    )]
    BadBootFlag {
        /// The value found at 0x1FE.
        found: u16,
    },
    /// No "HdrS" at 0x202.
    #[error(
        "not a bzImage: missing HdrS magic at 0x202; pass an uncompressed vmlinux ELF or a bzImage"
    )]
    BadHeaderMagic,
    /// The boot protocol predates `payload_offset`/`payload_length`.
    #[error(
        "bzImage boot protocol {}.{:02} is too old: locating the compressed kernel needs \
         protocol 2.08 or later (Linux 2.6.26+); pass the uncompressed vmlinux ELF instead",
        version >> 8,
        version & 0xff
    )]
    ProtocolTooOld {
        /// The version word at 0x206.
        version: u16,
    },
    /// `payload_offset`/`payload_length` point outside the file, or the payload is too small.
    #[error(
        "bzImage payload out of bounds: payload_offset/payload_length give bytes {start:#x}..{end:#x} \
         of a {len}-byte file (at least 4 bytes needed); the bzImage is truncated or corrupt"
    )]
    PayloadOutOfBounds {
        /// File offset where the payload would start.
        start: u64,
        /// File offset where the payload would end.
        end: u64,
        /// The file's length.
        len: usize,
    },
    /// The payload starts with no known compression magic.
    #[error(
        "unknown kernel payload compression: it starts with {magic}, which is none of gzip, xz, \
         lzma, lz4 (legacy), zstd, bzip2 or lzo; the bzImage is corrupt, or pass an uncompressed \
         vmlinux ELF"
    )]
    UnknownCompression {
        /// The first bytes of the payload, in hex.
        magic: String,
    },
    /// The payload uses a format this module recognises but does not decompress.
    #[error(
        "the kernel payload is {format}-compressed, which is not supported; use a kernel built \
         with gzip, xz, lzma, lz4 or zstd, or extract its vmlinux (e.g. with the kernel's \
         scripts/extract-vmlinux) and pass that ELF"
    )]
    UnsupportedCompression {
        /// The format found.
        format: Compression,
    },
    /// The decoder rejected the payload.
    #[error(
        "{format} decompression of the kernel payload failed: {detail}; the bzImage is truncated \
         or corrupt"
    )]
    Decompress {
        /// The payload's format.
        format: Compression,
        /// What the decoder said.
        detail: String,
    },
    /// The payload claims, or would produce, more than [`MAX_VMLINUX_SIZE`] bytes.
    #[error(
        "the {format} kernel payload would decompress to more than the {limit}-byte limit \
         ({detail}); refusing: the bzImage is corrupt, or pass its uncompressed vmlinux ELF"
    )]
    TooLarge {
        /// The payload's format.
        format: Compression,
        /// The limit applied.
        limit: u64,
        /// What exceeded it.
        detail: String,
    },
    /// The decompressed size differs from the size recorded at the payload's end.
    #[error(
        "{format} kernel payload decompressed to {actual} bytes but its trailer records \
         {expected}; the bzImage is truncated or corrupt"
    )]
    SizeMismatch {
        /// The payload's format.
        format: Compression,
        /// The size recorded in the payload's last 4 bytes.
        expected: u32,
        /// The size actually produced.
        actual: usize,
    },
    /// The payload decompresses to more than the size recorded at its end (decoding stopped
    /// one byte past it).
    #[error(
        "{format} kernel payload decompresses to more than the {expected} bytes its trailer \
         records; the bzImage is corrupt"
    )]
    LongerThanTrailer {
        /// The payload's format.
        format: Compression,
        /// The size recorded in the payload's last 4 bytes.
        expected: u32,
    },
    /// The result is not a 64-bit x86 ELF executable.
    #[error(
        "not a vmlinux: {reason}; an x86-64 kernel's vmlinux is an ELF64 little-endian \
         x86-64 executable (is this an x86-64 kernel image?)"
    )]
    NotElf {
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// Whether `image` starts with the ELF magic (`\x7fELF`). This says only that the file is an
/// ELF (as opposed to a bzImage); [`check_vmlinux_elf`] checks that it is a loadable x86-64
/// kernel.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(ELF_MAGIC)
}

/// Checks that `image` is an ELF64 little-endian x86-64 executable whose program headers lie
/// inside the file.
pub fn check_vmlinux_elf(image: &[u8]) -> Result<(), VmlinuxError> {
    let bad = |reason| Err(VmlinuxError::NotElf { reason });
    if !is_elf(image) {
        return bad("no ELF magic (\\x7fELF) at offset 0");
    }
    if image.len() < ELF64_EHDR_SIZE {
        return bad("the file is shorter than an ELF64 header");
    }
    if image[4] != ELFCLASS64 {
        return bad("it is not a 64-bit ELF (EI_CLASS is not ELFCLASS64)");
    }
    if image[5] != ELFDATA2LSB {
        return bad("it is not a little-endian ELF (EI_DATA is not ELFDATA2LSB)");
    }
    if le16(image, 16) != ET_EXEC {
        return bad("it is not an executable (e_type is not ET_EXEC)");
    }
    if le16(image, 18) != EM_X86_64 {
        return bad("it is not for x86-64 (e_machine is not EM_X86_64)");
    }
    let phoff = le64(image, 32);
    let phentsize = u64::from(le16(image, 54));
    let phnum = u64::from(le16(image, 56));
    if phnum == 0 {
        return bad("it has no program headers");
    }
    if phentsize < ELF64_PHDR_SIZE as u64 {
        return bad("its program header entries are smaller than Elf64_Phdr");
    }
    let end = phentsize
        .checked_mul(phnum)
        .and_then(|n| n.checked_add(phoff));
    match end {
        Some(end) if end <= image.len() as u64 => Ok(()),
        _ => bad("its program headers extend past the end of the file"),
    }
}

/// Validates the bzImage setup header and returns the compressed payload (including the
/// 4-byte size trailer the kernel build appends).
pub fn locate_payload(bzimage: &[u8]) -> Result<&[u8], VmlinuxError> {
    let len = bzimage.len();
    if len < SETUP_HEADER_END {
        return Err(VmlinuxError::TooShort {
            len,
            need: SETUP_HEADER_END,
        });
    }
    let boot_flag = le16(bzimage, OFF_BOOT_FLAG);
    if boot_flag != BOOT_FLAG {
        return Err(VmlinuxError::BadBootFlag { found: boot_flag });
    }
    if &bzimage[OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4] != HEADER_MAGIC {
        return Err(VmlinuxError::BadHeaderMagic);
    }
    let version = le16(bzimage, OFF_VERSION);
    if version < MIN_PROTOCOL {
        return Err(VmlinuxError::ProtocolTooOld { version });
    }
    let setup_sects = match bzimage[OFF_SETUP_SECTS] {
        0 => 4,
        n => u64::from(n),
    };
    let pm_start = (setup_sects + 1) * SECTOR_SIZE as u64;
    let start = pm_start + u64::from(le32(bzimage, OFF_PAYLOAD_OFFSET));
    let end = start + u64::from(le32(bzimage, OFF_PAYLOAD_LENGTH));
    if end > len as u64 || end - start < 4 {
        return Err(VmlinuxError::PayloadOutOfBounds { start, end, len });
    }
    // Both bounds are <= len, so they fit in usize.
    Ok(&bzimage[start as usize..end as usize])
}

/// Recognises the payload's compression by its magic bytes.
pub fn detect_compression(payload: &[u8]) -> Option<Compression> {
    const MAGICS: &[(&[u8], Compression)] = &[
        (&[0x1F, 0x8B], Compression::Gzip),
        (&[0xFD, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
        (&[0x02, 0x21, 0x4C, 0x18], Compression::Lz4),
        (&[0x28, 0xB5, 0x2F, 0xFD], Compression::Zstd),
        // .lzma: the properties byte (lc=3, lp=0, pb=2 is what `lzma` always writes), then a
        // little-endian dictionary size whose low bytes are zero for the usual sizes.
        (&[0x5D, 0x00, 0x00], Compression::Lzma),
        (b"BZh", Compression::Bzip2),
        (
            &[0x89, b'L', b'Z', b'O', 0x00, 0x0D, 0x0A, 0x1A, 0x0A],
            Compression::Lzo,
        ),
    ];
    MAGICS
        .iter()
        .find(|(magic, _)| payload.starts_with(magic))
        .map(|&(_, format)| format)
}

/// Extracts the uncompressed vmlinux ELF from a Linux x86 bzImage.
///
/// Validates the setup header, locates and decompresses the payload, checks its size against
/// the size recorded at the payload's end and checks that the result is an ELF64 x86-64
/// executable. Never produces more than [`MAX_VMLINUX_SIZE`] bytes.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    extract_vmlinux_within(bzimage, MAX_VMLINUX_SIZE)
}

/// [`extract_vmlinux`] producing at most `limit` bytes (itself capped at [`MAX_VMLINUX_SIZE`]):
/// a payload whose size trailer records more is refused before decompressing, and the decoder
/// is stopped one byte past what the trailer records. The loader passes the guest RAM, so a
/// hostile bzImage cannot make hvkvm allocate more than the guest it boots.
pub fn extract_vmlinux_within(bzimage: &[u8], limit: usize) -> Result<Vec<u8>, VmlinuxError> {
    let limit = limit.min(MAX_VMLINUX_SIZE);
    let payload = locate_payload(bzimage)?;
    let format = detect_compression(payload).ok_or_else(|| VmlinuxError::UnknownCompression {
        magic: hex_prefix(payload, 8),
    })?;
    // A decoder bug must not take the VMM down: turn a panic inside one into an error.
    let vmlinux = std::panic::catch_unwind(|| decompress_payload(payload, format, limit))
        .unwrap_or_else(|_| {
            Err(VmlinuxError::Decompress {
                format,
                detail: "the decoder panicked on this input".to_string(),
            })
        })?;
    check_vmlinux_elf(&vmlinux)?;
    Ok(vmlinux)
}

/// Returns `image` itself when it is already an ELF (after checking it is a loadable x86-64
/// executable), or the vmlinux extracted from it when it is a bzImage.
pub fn vmlinux_from_image(image: &[u8]) -> Result<Cow<'_, [u8]>, VmlinuxError> {
    if is_elf(image) {
        check_vmlinux_elf(image)?;
        Ok(Cow::Borrowed(image))
    } else {
        extract_vmlinux(image).map(Cow::Owned)
    }
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    if bytes.is_empty() {
        return "nothing (empty payload)".to_string();
    }
    bytes
        .iter()
        .take(n)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decompresses a payload (with its trailing 4-byte size) of a known format and checks the
/// result's length against that size, which must not exceed `limit`.
fn decompress_payload(
    payload: &[u8],
    format: Compression,
    limit: usize,
) -> Result<Vec<u8>, VmlinuxError> {
    if !format.is_supported() {
        return Err(VmlinuxError::UnsupportedCompression { format });
    }
    // `locate_payload` guarantees at least 4 bytes; the internal callers in tests too.
    let (body, trailer) = payload.split_at(payload.len().saturating_sub(4));
    if trailer.len() < 4 {
        return Err(decompress_error(
            format,
            "the payload is shorter than its size trailer",
        ));
    }
    let expected = le32(trailer, 0);
    if expected as usize > limit {
        return Err(VmlinuxError::TooLarge {
            format,
            limit: limit as u64,
            detail: format!("its trailer records {expected} bytes"),
        });
    }
    // Output past what the trailer records is a mismatch whatever follows: stop one byte
    // after it, so the decoder's output is bounded by the trailer (and so by `limit`).
    let cap = expected as usize;
    // Preallocate what the trailer promises, but never far more than the input could plausibly
    // expand to, so a lying trailer on a tiny file cannot force a large allocation.
    let hint = (expected as usize).min(payload.len().saturating_mul(32));
    let out = match format {
        // gzip's own trailer (CRC32, ISIZE) is the payload's end: the decoder reads all of it.
        Compression::Gzip => {
            read_bounded(flate2::bufread::GzDecoder::new(payload), format, hint, cap)?
        }
        Compression::Xz => {
            let reader = lzma_rust2::XzReader::new_mem_limit(
                body,
                false,
                (MAX_DICT_SIZE >> 10) as u32 + 1024,
            );
            read_bounded(reader, format, hint, cap)?
        }
        Compression::Lzma => decompress_lzma(body, hint, cap)?,
        Compression::Lz4 => decompress_lz4_legacy(body, expected as usize)?,
        Compression::Zstd => decompress_zstd(body, hint, cap)?,
        Compression::Bzip2 | Compression::Lzo => {
            return Err(VmlinuxError::UnsupportedCompression { format });
        }
    };
    if out.len() > expected as usize {
        return Err(VmlinuxError::LongerThanTrailer { format, expected });
    }
    if out.len() != expected as usize {
        return Err(VmlinuxError::SizeMismatch {
            format,
            expected,
            actual: out.len(),
        });
    }
    Ok(out)
}

fn decompress_error(format: Compression, detail: impl fmt::Display) -> VmlinuxError {
    VmlinuxError::Decompress {
        format,
        detail: detail.to_string(),
    }
}

fn too_large(format: Compression, detail: String) -> VmlinuxError {
    VmlinuxError::TooLarge {
        format,
        limit: MAX_VMLINUX_SIZE as u64,
        detail,
    }
}

/// Reads a decoder to its end, or to one byte past `cap` (which the caller then reports as a
/// size mismatch); never more than [`MAX_VMLINUX_SIZE`] bytes.
fn read_bounded(
    reader: impl Read,
    format: Compression,
    hint: usize,
    cap: usize,
) -> Result<Vec<u8>, VmlinuxError> {
    let mut out = Vec::with_capacity(hint);
    reader
        .take(cap.min(MAX_VMLINUX_SIZE) as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| decompress_error(format, e))?;
    if out.len() > MAX_VMLINUX_SIZE {
        return Err(too_large(format, "the decoder produced more".to_string()));
    }
    Ok(out)
}

fn decompress_lzma(body: &[u8], hint: usize, cap: usize) -> Result<Vec<u8>, VmlinuxError> {
    const FORMAT: Compression = Compression::Lzma;
    // .lzma header: properties (1 byte), dictionary size (le32), uncompressed size (le64,
    // all ones when unknown, as the kernel's piped `lzma -9` writes it).
    if body.len() < 13 {
        return Err(decompress_error(FORMAT, "the .lzma header is truncated"));
    }
    let dict = le32(body, 1);
    if u64::from(dict) > MAX_DICT_SIZE {
        return Err(too_large(FORMAT, format!("its dictionary is {dict} bytes")));
    }
    let size = le64(body, 5);
    if size != u64::MAX && size > MAX_VMLINUX_SIZE as u64 {
        return Err(too_large(
            FORMAT,
            format!("its header records {size} bytes"),
        ));
    }
    let reader =
        lzma_rust2::LzmaReader::new_mem_limit(body, (MAX_DICT_SIZE >> 10) as u32 + 1024, None)
            .map_err(|e| decompress_error(FORMAT, e))?;
    read_bounded(reader, FORMAT, hint, cap)
}

/// The zstd frame header's window size, checked before the decoder reserves it.
fn zstd_window_size(body: &[u8]) -> Result<u64, VmlinuxError> {
    const FORMAT: Compression = Compression::Zstd;
    let truncated = || decompress_error(FORMAT, "the frame header is truncated");
    let descriptor = *body.get(4).ok_or_else(truncated)?;
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let wd = *body.get(5).ok_or_else(truncated)?;
        let log = 10 + u32::from(wd >> 3);
        let base = 1u64 << log;
        return Ok(base + (base / 8) * u64::from(wd & 7));
    }
    // Single segment: the window is the frame content size, which follows the dictionary ID.
    let dict_id_len = [0usize, 1, 2, 4][usize::from(descriptor & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(descriptor >> 6)];
    let at = 5 + dict_id_len;
    let field = body.get(at..at + fcs_len).ok_or_else(truncated)?;
    let mut w = [0u8; 8];
    w[..fcs_len].copy_from_slice(field);
    let fcs = u64::from_le_bytes(w);
    Ok(if fcs_len == 2 { fcs + 256 } else { fcs })
}

fn decompress_zstd(body: &[u8], hint: usize, cap: usize) -> Result<Vec<u8>, VmlinuxError> {
    const FORMAT: Compression = Compression::Zstd;
    let window = zstd_window_size(body)?;
    if window > MAX_DICT_SIZE {
        return Err(too_large(
            FORMAT,
            format!("its frame asks for a {window}-byte window"),
        ));
    }
    let decoder =
        ruzstd::decoding::StreamingDecoder::new(body).map_err(|e| decompress_error(FORMAT, e))?;
    read_bounded(decoder, FORMAT, hint, cap)
}

/// Decodes the legacy LZ4 frame format (as written by `lz4 -l`), size trailer already removed,
/// straight into a buffer of the size that trailer records.
fn decompress_lz4_legacy(body: &[u8], expected: usize) -> Result<Vec<u8>, VmlinuxError> {
    const FORMAT: Compression = Compression::Lz4;
    // An LZ4 sequence expands at most about 255-fold, so a trailer beyond that is a lie; this
    // also bounds the allocation below by the input's size.
    if expected > body.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(decompress_error(
            FORMAT,
            format!(
                "the size trailer records {expected} bytes, more than {} compressed bytes can hold",
                body.len()
            ),
        ));
    }
    let mut out = vec![0u8; expected];
    let mut filled = 0;
    let mut pos = 0;
    while pos < body.len() {
        if body.len() - pos < 4 {
            return Err(decompress_error(FORMAT, "a block header is truncated"));
        }
        let word = le32(body, pos);
        pos += 4;
        if word == LZ4_LEGACY_MAGIC {
            continue; // start of a (possibly concatenated) frame
        }
        if pos == 4 {
            return Err(decompress_error(
                FORMAT,
                "the legacy frame magic is missing",
            ));
        }
        let csize = word as usize;
        if csize == 0 || csize > LZ4_LEGACY_MAX_CBLOCK {
            return Err(decompress_error(
                FORMAT,
                format!("invalid block size {csize}"),
            ));
        }
        if csize > body.len() - pos {
            return Err(decompress_error(
                FORMAT,
                format!(
                    "a {csize}-byte block is cut off after {} bytes",
                    body.len() - pos
                ),
            ));
        }
        let block = &body[pos..pos + csize];
        pos += csize;
        let room = LZ4_LEGACY_BLOCK.min(expected - filled);
        match lz4_flex::block::decompress_into(block, &mut out[filled..filled + room]) {
            Ok(n) => filled += n,
            Err(_) if room < LZ4_LEGACY_BLOCK => {
                return Err(decompress_error(
                    FORMAT,
                    format!(
                        "the data is corrupt or runs past the {expected} bytes the size \
                         trailer records"
                    ),
                ));
            }
            Err(e) => return Err(decompress_error(FORMAT, e)),
        }
    }
    out.truncate(filled);
    Ok(out)
}

#[cfg(test)]
mod tests;
