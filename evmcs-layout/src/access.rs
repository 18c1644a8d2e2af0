//! Reading and writing eVMCS fields by VMCS encoding, over bytes.
//!
//! Everything here works on a [`PageRead`]/[`PageWrite`] backing rather than on
//! `&HvEnlightenedVmcs`: the eVMCS lives in guest memory that L1 may rewrite at any time, so the
//! VMM must not hold a Rust reference to it. Byte slices and arrays implement the traits
//! (bounds-checked); a VMM implements them over its guest-memory API, e.g. with volatile copies,
//! and may override [`PageRead::read_le`]/[`PageWrite::write_le`] to use single aligned accesses.
//!
//! Nothing here panics: unknown encodings and short buffers come back as [`AccessError`].
//!
//! # Sync
//! [`sync`] is the L0 side of an eVMCS entry (what KVM's `copy_enlightened_to_vmcs12` does): it
//! copies into a [`VmcsImage`]
//! - the [`CleanGroup::Always`] fields L1 writes (guest RIP, TPR threshold), every time;
//! - the fields of every TLFS group whose clean bit is clear;
//! - the [`CleanGroup::All`] fields (no clean bit exists for them) every time. KVM ignores these
//!   fields; a VMM inspecting or migrating L1 state wants them current;
//! - the `hv_*` enlightenment fields when [`CleanFields::ENLIGHTENMENTS_CONTROL`] is clear.
//!
//! Read-only VM-exit information fields are never copied in: they flow from L0 to L1.

use core::fmt;

use crate::clean::{CleanFields, CleanGroup, EnlightenmentsControl};
use crate::fields::{self, EvmcsField, SyntheticField, FIELD_COUNT, FIELD_TABLE, GROUP_ROWS};
use crate::version::EVMCS_VERSION;
use crate::{vmcs, EVMCS_SIZE, PAGE_SIZE};

/// Why an access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessError {
    /// Not a well-formed VMCS encoding: a reserved bit is set, or "high" access (bit 0) is used
    /// on a field that is not 64-bit.
    InvalidEncoding(u32),
    /// A well-formed encoding that eVMCS v1 has no home for (see
    /// [`UNSUPPORTED_FIELDS`](crate::UNSUPPORTED_FIELDS)).
    NotInEvmcs(u32),
    /// The access `[offset, offset + len)` does not fit in the `available` bytes of the backing.
    OutOfBounds {
        /// First byte of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Bytes the backing holds.
        available: usize,
    },
    /// The backing could not be read or written at `offset` (e.g. unmapped guest memory); for
    /// [`PageRead`]/[`PageWrite`] implementations outside this crate.
    Backing {
        /// First byte of the failed access.
        offset: usize,
    },
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InvalidEncoding(e) => write!(f, "{e:#x} is not a valid VMCS field encoding"),
            Self::NotInEvmcs(e) => write!(f, "VMCS field {e:#x} has no home in eVMCS v1"),
            Self::OutOfBounds {
                offset,
                len,
                available,
            } => write!(
                f,
                "access of {len} bytes at offset {offset:#x} exceeds the {available}-byte buffer"
            ),
            Self::Backing { offset } => write!(f, "backing memory failed at offset {offset:#x}"),
        }
    }
}

impl core::error::Error for AccessError {}

/// Read access to the bytes of an eVMCS or VP assist page.
pub trait PageRead {
    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    ///
    /// # Errors
    /// [`AccessError::OutOfBounds`] or [`AccessError::Backing`].
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError>;

    /// Reads a little-endian value of `size` bytes (1 to 8), zero-extended.
    ///
    /// # Errors
    /// As [`PageRead::read_bytes`]; [`AccessError::OutOfBounds`] for `size > 8`.
    #[inline]
    fn read_le(&self, offset: usize, size: usize) -> Result<u64, AccessError> {
        let mut raw = [0u8; 8];
        let dst = raw.get_mut(..size).ok_or(too_wide(offset, size))?;
        self.read_bytes(offset, dst)?;
        Ok(u64::from_le_bytes(raw))
    }
}

/// Write access to the bytes of an eVMCS or VP assist page.
pub trait PageWrite: PageRead {
    /// Copies `data` to `offset`.
    ///
    /// # Errors
    /// [`AccessError::OutOfBounds`] or [`AccessError::Backing`]; nothing is written then.
    fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), AccessError>;

    /// Writes the low `size` bytes (1 to 8) of `value`, little-endian.
    ///
    /// # Errors
    /// As [`PageWrite::write_bytes`]; [`AccessError::OutOfBounds`] for `size > 8`.
    #[inline]
    fn write_le(&mut self, offset: usize, size: usize, value: u64) -> Result<(), AccessError> {
        let raw = value.to_le_bytes();
        let src = raw.get(..size).ok_or(too_wide(offset, size))?;
        self.write_bytes(offset, src)
    }
}

/// `bytes[offset..offset + len]`, or the error saying why not.
#[inline]
fn subslice(bytes: &[u8], offset: usize, len: usize) -> Result<&[u8], AccessError> {
    let available = bytes.len();
    offset
        .checked_add(len)
        .and_then(|end| bytes.get(offset..end))
        .ok_or(AccessError::OutOfBounds {
            offset,
            len,
            available,
        })
}

/// `&mut bytes[offset..offset + len]`, or the error saying why not.
#[inline]
fn subslice_mut(bytes: &mut [u8], offset: usize, len: usize) -> Result<&mut [u8], AccessError> {
    let available = bytes.len();
    offset
        .checked_add(len)
        .and_then(|end| bytes.get_mut(offset..end))
        .ok_or(AccessError::OutOfBounds {
            offset,
            len,
            available,
        })
}

/// Error for a `read_le`/`write_le` wider than a `u64`.
const fn too_wide(offset: usize, size: usize) -> AccessError {
    AccessError::OutOfBounds {
        offset,
        len: size,
        available: 8,
    }
}

impl PageRead for [u8] {
    #[inline]
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        buf.copy_from_slice(subslice(self, offset, buf.len())?);
        Ok(())
    }

    // Fixed-width loads for the field sizes, instead of a variable-length copy.
    #[inline]
    fn read_le(&self, offset: usize, size: usize) -> Result<u64, AccessError> {
        if size > 8 {
            return Err(too_wide(offset, size));
        }
        let bytes = subslice(self, offset, size)?;
        Ok(match *bytes {
            [a, b] => u16::from_le_bytes([a, b]).into(),
            [a, b, c, d] => u32::from_le_bytes([a, b, c, d]).into(),
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => bytes
                .iter()
                .rev()
                .fold(0, |acc, &b| acc << 8 | u64::from(b)),
        })
    }
}

impl PageWrite for [u8] {
    #[inline]
    fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        subslice_mut(self, offset, data.len())?.copy_from_slice(data);
        Ok(())
    }

    // Fixed-width stores for the field sizes, instead of a variable-length copy.
    #[inline]
    fn write_le(&mut self, offset: usize, size: usize, value: u64) -> Result<(), AccessError> {
        let raw = value.to_le_bytes();
        let src = raw.get(..size).ok_or(too_wide(offset, size))?;
        let dst = subslice_mut(self, offset, size)?;
        match dst.len() {
            2 => dst.copy_from_slice(&raw[..2]),
            4 => dst.copy_from_slice(&raw[..4]),
            8 => dst.copy_from_slice(&raw),
            _ => dst.copy_from_slice(src),
        }
        Ok(())
    }
}

impl<const N: usize> PageRead for [u8; N] {
    #[inline]
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        self.as_slice().read_bytes(offset, buf)
    }

    #[inline]
    fn read_le(&self, offset: usize, size: usize) -> Result<u64, AccessError> {
        self.as_slice().read_le(offset, size)
    }
}

impl<const N: usize> PageWrite for [u8; N] {
    #[inline]
    fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        self.as_mut_slice().write_bytes(offset, data)
    }

    #[inline]
    fn write_le(&mut self, offset: usize, size: usize, value: u64) -> Result<(), AccessError> {
        self.as_mut_slice().write_le(offset, size, value)
    }
}

/// A zeroed, 4 KiB-aligned page, e.g. for a guest's own eVMCS or VP assist page.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct Page(pub [u8; PAGE_SIZE]);

impl Page {
    /// An all-zero page.
    pub const ZERO: Self = Self([0; PAGE_SIZE]);
}

impl Default for Page {
    fn default() -> Self {
        Self::ZERO
    }
}

impl PageRead for Page {
    #[inline]
    fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        self.0.read_bytes(offset, buf)
    }

    #[inline]
    fn read_le(&self, offset: usize, size: usize) -> Result<u64, AccessError> {
        self.0.read_le(offset, size)
    }
}

impl PageWrite for Page {
    #[inline]
    fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        self.0.write_bytes(offset, data)
    }

    #[inline]
    fn write_le(&mut self, offset: usize, size: usize, value: u64) -> Result<(), AccessError> {
        self.0.write_le(offset, size, value)
    }
}

/// A table row plus whether the access names the high 32 bits of a 64-bit field.
#[derive(Clone, Copy)]
struct Resolved {
    row: usize,
    field: &'static EvmcsField,
    high: bool,
}

#[inline]
fn resolve(encoding: u32) -> Result<Resolved, AccessError> {
    if !vmcs::is_well_formed(encoding) {
        return Err(AccessError::InvalidEncoding(encoding));
    }
    let high = vmcs::is_high_access(encoding);
    let row = fields::row_of(encoding & !1).ok_or(AccessError::NotInEvmcs(encoding))?;
    let field = FIELD_TABLE
        .get(row)
        .ok_or(AccessError::NotInEvmcs(encoding))?;
    Ok(Resolved { row, field, high })
}

/// Reads the field `encoding` from the eVMCS bytes in `mem`, zero-extended to 64 bits, like
/// VMREAD. A "high" encoding of a 64-bit field (bit 0 set) returns bits 63:32.
///
/// # Errors
/// [`AccessError::InvalidEncoding`], [`AccessError::NotInEvmcs`], or a backing error.
pub fn read_field<M: PageRead + ?Sized>(mem: &M, encoding: u32) -> Result<u64, AccessError> {
    let r = resolve(encoding)?;
    let value = mem.read_le(usize::from(r.field.offset), usize::from(r.field.size))?;
    Ok(if r.high { value >> 32 } else { value })
}

/// Writes the field `encoding` like VMWRITE: bits beyond the field's width are ignored, and a
/// "high" encoding replaces bits 63:32 only. Does not touch `hv_clean_fields`; returns the
/// clean bits this write invalidates (see [`write_field_and_dirty`] for the L1 side).
///
/// Read-only exit-information fields can be written too: in an eVMCS that is how L0 reports a
/// VM exit.
///
/// # Errors
/// [`AccessError::InvalidEncoding`], [`AccessError::NotInEvmcs`], or a backing error; the eVMCS
/// is unchanged then.
pub fn write_field<M: PageWrite + ?Sized>(
    mem: &mut M,
    encoding: u32,
    value: u64,
) -> Result<CleanFields, AccessError> {
    let r = resolve(encoding)?;
    let (offset, size) = (usize::from(r.field.offset), usize::from(r.field.size));
    if r.high {
        mem.write_le(offset + 4, 4, value & 0xFFFF_FFFF)?;
    } else {
        mem.write_le(offset, size, value)?;
    }
    Ok(r.field.group.dirty_mask())
}

/// L1 side of a field write: [`write_field`], then clears the field's clean bits in
/// `hv_clean_fields` so L0 reloads the group on the next entry. Returns the bits cleared.
///
/// # Errors
/// As [`write_field`].
pub fn write_field_and_dirty<M: PageWrite + ?Sized>(
    mem: &mut M,
    encoding: u32,
    value: u64,
) -> Result<CleanFields, AccessError> {
    let dirtied = write_field(mem, encoding, value)?;
    if !dirtied.is_empty() {
        let clean = clean_fields(mem)?;
        set_clean_fields(mem, clean.difference(dirtied))?;
    }
    Ok(dirtied)
}

/// Reads a synthetic (encoding-less) member such as `hv_vp_id`, zero-extended.
///
/// # Errors
/// A backing error.
pub fn read_synthetic<M: PageRead + ?Sized>(
    mem: &M,
    field: SyntheticField,
) -> Result<u64, AccessError> {
    mem.read_le(field.offset(), field.size())
}

/// Writes a synthetic member (truncated to its size). Does not touch `hv_clean_fields`.
///
/// # Errors
/// A backing error.
pub fn write_synthetic<M: PageWrite + ?Sized>(
    mem: &mut M,
    field: SyntheticField,
    value: u64,
) -> Result<(), AccessError> {
    mem.write_le(field.offset(), field.size(), value)
}

/// The `hv_clean_fields` word (undefined high bits kept).
///
/// # Errors
/// A backing error.
pub fn clean_fields<M: PageRead + ?Sized>(mem: &M) -> Result<CleanFields, AccessError> {
    read_synthetic(mem, SyntheticField::CleanFields)
        .map(|v| CleanFields::from_bits_retain(v as u32))
}

/// Writes the `hv_clean_fields` word; L0 sets [`CleanFields::ALL`] after consuming the eVMCS.
///
/// # Errors
/// A backing error.
pub fn set_clean_fields<M: PageWrite + ?Sized>(
    mem: &mut M,
    clean: CleanFields,
) -> Result<(), AccessError> {
    write_synthetic(mem, SyntheticField::CleanFields, u64::from(clean.bits()))
}

/// Prepares a fresh eVMCS as the TLFS requires: the whole structure zeroed (so every group is
/// dirty) and `revision_id` = [`EVMCS_VERSION`].
///
/// # Errors
/// A backing error (e.g. `mem` shorter than the 1024-byte structure).
pub fn initialize<M: PageWrite + ?Sized>(mem: &mut M) -> Result<(), AccessError> {
    mem.write_bytes(0, &[0; EVMCS_SIZE])?;
    write_synthetic(mem, SyntheticField::RevisionId, u64::from(EVMCS_VERSION))
}

/// The encoding-less enlightenment fields, as consumed by L0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Enlightenments {
    /// `hv_synthetic_controls`.
    pub synthetic_controls: u32,
    /// `hv_enlightenments_control` (undefined bits kept).
    pub control: u32,
    /// `hv_vp_id`.
    pub vp_id: u32,
    /// `hv_vm_id`.
    pub vm_id: u64,
    /// `partition_assist_page` (GPA).
    pub partition_assist_page: u64,
}

impl Enlightenments {
    /// Number of eVMCS members this struct holds.
    pub const FIELDS: usize = 5;

    /// `control` as flags.
    pub const fn control_flags(&self) -> EnlightenmentsControl {
        EnlightenmentsControl::from_bits_retain(self.control)
    }
}

/// A plain VMCS image keyed by VMCS encoding: one 64-bit value per [`FIELD_TABLE`] row, plus the
/// enlightenment fields. This is what L0 keeps as its cached copy of L1's VMCS ("vmcs12").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VmcsImage {
    values: [u64; FIELD_COUNT],
    /// The `hv_*` fields of [`CleanGroup::EnlightenmentsControl`].
    pub enlightenments: Enlightenments,
}

impl Default for VmcsImage {
    fn default() -> Self {
        Self::new()
    }
}

impl VmcsImage {
    /// An all-zero image.
    pub const fn new() -> Self {
        Self {
            values: [0; FIELD_COUNT],
            enlightenments: Enlightenments {
                synthetic_controls: 0,
                control: 0,
                vp_id: 0,
                vm_id: 0,
                partition_assist_page: 0,
            },
        }
    }

    /// The value of `encoding` ("high" encodings give bits 63:32).
    ///
    /// # Errors
    /// [`AccessError::InvalidEncoding`] or [`AccessError::NotInEvmcs`].
    pub fn get(&self, encoding: u32) -> Result<u64, AccessError> {
        let r = resolve(encoding)?;
        let value = self.values.get(r.row).copied().unwrap_or_default();
        Ok(if r.high { value >> 32 } else { value })
    }

    /// Sets `encoding` with VMWRITE truncation rules (see [`write_field`]).
    ///
    /// # Errors
    /// [`AccessError::InvalidEncoding`] or [`AccessError::NotInEvmcs`].
    pub fn set(&mut self, encoding: u32, value: u64) -> Result<(), AccessError> {
        let r = resolve(encoding)?;
        if let Some(slot) = self.values.get_mut(r.row) {
            *slot = if r.high {
                (*slot & 0xFFFF_FFFF) | (value << 32)
            } else {
                truncate(value, usize::from(r.field.size))
            };
        }
        Ok(())
    }

    /// Every `(encoding, value)` pair, in [`FIELD_TABLE`] order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        FIELD_TABLE
            .iter()
            .zip(self.values.iter())
            .map(|(f, v)| (f.encoding, *v))
    }
}

#[inline]
fn truncate(value: u64, size: usize) -> u64 {
    match size {
        1 => value & 0xFF,
        2 => value & 0xFFFF,
        4 => value & 0xFFFF_FFFF,
        _ => value,
    }
}

/// What a [`sync`] copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyncReport {
    /// The TLFS groups that were reloaded (their clean bit was clear).
    pub reloaded: CleanFields,
    /// Number of values copied, enlightenment fields included.
    pub fields_copied: usize,
}

/// L0 consumes the eVMCS in `mem` into `image`, honouring the clean bits the eVMCS itself holds.
/// See the module docs for exactly what is copied. On error `image` may be partly updated.
///
/// # Errors
/// A backing error.
pub fn sync<M: PageRead + ?Sized>(
    mem: &M,
    image: &mut VmcsImage,
) -> Result<SyncReport, AccessError> {
    let clean = clean_fields(mem)?;
    sync_with_clean(mem, image, clean)
}

/// [`sync`] with an explicit clean word instead of the eVMCS's own: pass
/// [`CleanFields::empty()`] to reload everything, as L0 must when the eVMCS GPA changed.
///
/// # Errors
/// A backing error.
pub fn sync_with_clean<M: PageRead + ?Sized>(
    mem: &M,
    image: &mut VmcsImage,
    clean: CleanFields,
) -> Result<SyncReport, AccessError> {
    let mut report = SyncReport {
        reloaded: CleanFields::ALL.difference(clean),
        fields_copied: 0,
    };
    for group in CleanGroup::ALL_GROUPS {
        if !group.needs_reload(clean) {
            continue;
        }
        if group == CleanGroup::EnlightenmentsControl {
            image.enlightenments = read_enlightenments(mem)?;
            report.fields_copied += Enlightenments::FIELDS;
        }
        let (start, end) = GROUP_ROWS.get(group.index()).copied().unwrap_or_default();
        let fields = FIELD_TABLE.get(start..end).unwrap_or_default();
        let slots = image.values.get_mut(start..end).unwrap_or_default();
        for (field, slot) in fields.iter().zip(slots) {
            if field.is_read_only() {
                continue;
            }
            *slot = mem.read_le(usize::from(field.offset), usize::from(field.size))?;
            report.fields_copied += 1;
        }
    }
    Ok(report)
}

fn read_enlightenments<M: PageRead + ?Sized>(mem: &M) -> Result<Enlightenments, AccessError> {
    let get = |f| read_synthetic(mem, f);
    Ok(Enlightenments {
        synthetic_controls: get(SyntheticField::SyntheticControls)? as u32,
        control: get(SyntheticField::EnlightenmentsControl)? as u32,
        vp_id: get(SyntheticField::VpId)? as u32,
        vm_id: get(SyntheticField::VmId)?,
        partition_assist_page: get(SyntheticField::PartitionAssistPage)?,
    })
}
