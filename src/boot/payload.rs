//! ELF64 test payloads: the boot contract external payloads rely on (README.md, "Payload
//! contract").
//!
//! - Each PT_LOAD segment is copied to its physical address (`p_paddr`); bytes past
//!   `p_filesz` up to `p_memsz` are zero.
//! - Segments must lie in RAM at or above [`PAYLOAD_MIN_ADDR`] and below the stack area.
//! - Every vCPU starts at `e_entry` in long mode (see `long_mode`), RDI = vCPU index,
//!   RSI = vCPU count, RDX = `ram_top` (end of low RAM), RFLAGS.IF = 0.
//! - vCPU *i* has a [`STACK_SIZE`] stack at `[ram_top - (i+1)*STACK_SIZE, ram_top - i*STACK_SIZE)`
//!   and enters with `RSP = ram_top - i*STACK_SIZE - 8`, as if its entry had been `call`ed.

use std::ops::Range;

use super::{long_mode, BootPlan, VcpuBootState};
use crate::memory::layout::{self, LOW_RESERVED_END};
use crate::memory::{Bytes, GuestAddress, GuestMemory};

/// Lowest address a payload segment may occupy (below it are hvkvm's boot structures).
pub const PAYLOAD_MIN_ADDR: u64 = LOW_RESERVED_END;
/// Stack bytes per vCPU.
pub const STACK_SIZE: u64 = 64 * 1024;

const PT_LOAD: u32 = 1;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const MAX_PHDRS: usize = 128;

/// Why a payload cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not an ELF64 little-endian x86-64 executable.
    #[error("not an ELF64 x86-64 executable: {0}; build the payload for x86_64 as a static ELF")]
    NotElf(&'static str),
    /// A header points outside the file.
    #[error("corrupt ELF: {0}")]
    Corrupt(&'static str),
    /// A segment lies where the contract forbids.
    #[error(
        "segment {index} at {start:#x}..{end:#x} is outside the payload area {min:#x}..{max:#x}; \
         link the payload at or above 1 MiB and keep it below the vCPU stacks at the top of RAM \
         (or give the VM more --memory)"
    )]
    SegmentOutOfBounds {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Lowest allowed address.
        min: u64,
        /// One past the highest allowed address.
        max: u64,
    },
    /// Two segments overlap.
    #[error("segments {0} and {1} overlap in guest memory")]
    Overlap(usize, usize),
    /// The entry point is not inside a loaded segment.
    #[error("entry point {0:#x} is not inside any loaded segment")]
    EntryOutsideSegments(u64),
    /// No PT_LOAD segment.
    #[error("the ELF file has no loadable segment")]
    NoSegments,
    /// Copying into guest memory failed.
    #[error("cannot copy segment {index} into guest memory")]
    Write {
        /// Program header index.
        index: usize,
        /// The guest-memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Writing page tables/GDT failed.
    #[error(transparent)]
    Tables(#[from] long_mode::LongModeError),
    /// Too many vCPUs for the stacks to fit.
    #[error("{cpus} vCPU stacks of 64 KiB do not fit in {ram_top:#x} bytes of low RAM")]
    NoRoomForStacks {
        /// vCPUs requested.
        cpus: u32,
        /// End of low RAM.
        ram_top: u64,
    },
}

/// A validated PT_LOAD segment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    index: usize,
    paddr: u64,
    file: Range<usize>,
    memsz: u64,
}

/// The parts of a validated ELF payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParsedElf {
    entry: u64,
    segments: Vec<Segment>,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or_default())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or_default())
}

/// Parses and validates an ELF image against the payload area `area`.
fn parse(image: &[u8], area: Range<u64>) -> Result<ParsedElf, PayloadError> {
    if image.len() < EHDR_SIZE || &image[..4] != b"\x7fELF" {
        return Err(PayloadError::NotElf("missing \\x7fELF magic"));
    }
    if image[4] != 2 || image[5] != 1 {
        return Err(PayloadError::NotElf("not 64-bit little-endian"));
    }
    if u16_at(image, 18) != 62 {
        return Err(PayloadError::NotElf("e_machine is not x86-64 (62)"));
    }
    if u16_at(image, 16) != 2 {
        return Err(PayloadError::NotElf(
            "not an executable (ET_EXEC); link with -static -no-pie",
        ));
    }
    let entry = u64_at(image, 24);
    let phoff = usize::try_from(u64_at(image, 32)).map_err(|_| PayloadError::Corrupt("e_phoff"))?;
    let phentsize = usize::from(u16_at(image, 54));
    let phnum = usize::from(u16_at(image, 56));
    if phentsize != PHDR_SIZE || phnum > MAX_PHDRS {
        return Err(PayloadError::Corrupt(
            "unexpected program header size or count",
        ));
    }
    let table_end = phnum
        .checked_mul(PHDR_SIZE)
        .and_then(|n| n.checked_add(phoff))
        .filter(|&end| end <= image.len())
        .ok_or(PayloadError::Corrupt(
            "program headers past the end of the file",
        ))?;
    let mut segments = Vec::new();
    for (index, ph) in image[phoff..table_end].chunks_exact(PHDR_SIZE).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let offset = u64_at(ph, 8);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        if filesz > memsz {
            return Err(PayloadError::Corrupt("p_filesz larger than p_memsz"));
        }
        let file_end = offset
            .checked_add(filesz)
            .filter(|&end| end <= image.len() as u64)
            .ok_or(PayloadError::Corrupt(
                "segment data past the end of the file",
            ))?;
        let end = paddr
            .checked_add(memsz)
            .ok_or(PayloadError::Corrupt("segment wraps"))?;
        if memsz == 0 {
            continue;
        }
        if paddr < area.start || end > area.end {
            return Err(PayloadError::SegmentOutOfBounds {
                index,
                start: paddr,
                end,
                min: area.start,
                max: area.end,
            });
        }
        segments.push(Segment {
            index,
            paddr,
            file: offset as usize..file_end as usize,
            memsz,
        });
    }
    if segments.is_empty() {
        return Err(PayloadError::NoSegments);
    }
    for (i, a) in segments.iter().enumerate() {
        for b in &segments[i + 1..] {
            if a.paddr < b.paddr + b.memsz && b.paddr < a.paddr + a.memsz {
                return Err(PayloadError::Overlap(a.index, b.index));
            }
        }
    }
    if !segments
        .iter()
        .any(|s| (s.paddr..s.paddr + s.memsz).contains(&entry))
    {
        return Err(PayloadError::EntryOutsideSegments(entry));
    }
    Ok(ParsedElf { entry, segments })
}

/// The address range payload segments may use for `cpus` vCPUs and `ram_top` of low RAM.
pub fn payload_area(ram_top: u64, cpus: u32) -> Result<Range<u64>, PayloadError> {
    let stacks = u64::from(cpus) * STACK_SIZE;
    let stack_base = ram_top
        .checked_sub(stacks)
        .filter(|&b| b > PAYLOAD_MIN_ADDR)
        .ok_or(PayloadError::NoRoomForStacks { cpus, ram_top })?;
    Ok(PAYLOAD_MIN_ADDR..stack_base)
}

/// Checks `image` against the payload contract for `cpus` vCPUs and `ram_size` bytes of RAM
/// without loading it: what [`load`] would refuse, refused before a VM exists.
pub fn check(image: &[u8], ram_size: u64, cpus: u32) -> Result<(), PayloadError> {
    parse(image, payload_area(layout::low_ram_top(ram_size), cpus)?).map(drop)
}

/// Loads `image` into `mem` and returns the entry state of `cpus` vCPUs.
pub fn load(
    mem: &GuestMemory,
    ram_size: u64,
    cpus: u32,
    image: &[u8],
    name: &str,
) -> Result<BootPlan, PayloadError> {
    let ram_top = layout::low_ram_top(ram_size);
    let elf = parse(image, payload_area(ram_top, cpus)?)?;
    for seg in &elf.segments {
        let write_err = |source| PayloadError::Write {
            index: seg.index,
            source,
        };
        mem.write_slice(&image[seg.file.clone()], GuestAddress(seg.paddr))
            .map_err(write_err)?;
        // Zero the rest of the segment a chunk at a time: a large p_memsz must not cost a host
        // buffer of its size on top of the guest RAM it fills.
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut at = seg.paddr + seg.file.len() as u64;
        let end = seg.paddr + seg.memsz;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            mem.write_slice(&ZEROS[..n], GuestAddress(at))
                .map_err(write_err)?;
            at += n as u64;
        }
    }
    long_mode::write_tables(mem)?;
    let vcpus = (0..cpus)
        .map(|i| {
            let rsp = ram_top - u64::from(i) * STACK_SIZE - 8;
            VcpuBootState {
                regs: long_mode::regs(elf.entry, rsp, [u64::from(i), u64::from(cpus), ram_top]),
                sregs: long_mode::sregs(Default::default()),
                runnable: true,
            }
        })
        .collect();
    Ok(BootPlan {
        vcpus,
        description: format!("ELF payload {name}, entry {:#x}, {cpus} vCPU(s)", elf.entry),
        host_steps: Vec::new(),
    })
}

/// A minimal ELF64 executable: `code` as one RWX segment loaded and entered at `addr`. For
/// tests and benchmarks that need a handful of exact instructions.
pub fn elf_from_code(addr: u64, code: &[u8]) -> Vec<u8> {
    let offset = (EHDR_SIZE + PHDR_SIZE) as u64;
    let mut elf = vec![0u8; EHDR_SIZE + PHDR_SIZE];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little endian
    elf[6] = 1; // EV_CURRENT
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&addr.to_le_bytes());
    elf[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
    elf[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    elf[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = &mut elf[EHDR_SIZE..];
    ph[..4].copy_from_slice(&PT_LOAD.to_le_bytes());
    ph[4..8].copy_from_slice(&7u32.to_le_bytes()); // PF_R | PF_W | PF_X
    ph[8..16].copy_from_slice(&offset.to_le_bytes());
    ph[16..24].copy_from_slice(&addr.to_le_bytes());
    ph[24..32].copy_from_slice(&addr.to_le_bytes());
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(code);
    elf
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal ELF64 executable with the given (paddr, data, memsz) segments.
    pub(crate) fn make_elf(entry: u64, segments: &[(u64, &[u8], u64)]) -> Vec<u8> {
        let phoff = EHDR_SIZE;
        let data_start = phoff + PHDR_SIZE * segments.len();
        let mut out = vec![0u8; data_start];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        out[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        out[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for (i, (paddr, data, memsz)) in segments.iter().enumerate() {
            let offset = out.len() as u64;
            let ph = phoff + i * PHDR_SIZE;
            out[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            out[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    #[test]
    fn loads_segments_and_zeroes_bss() {
        let mem = crate::memory::allocate(32).unwrap();
        mem.write_slice(&[0xaa; 16], GuestAddress(0x200004))
            .unwrap();
        let elf = make_elf(0x200000, &[(0x200000, &[0xf4, 0x90, 0x90, 0x90], 20)]);
        let plan = load(&mem, 32 << 20, 2, &elf, "t").unwrap();
        let mut buf = [0u8; 8];
        mem.read_slice(&mut buf, GuestAddress(0x200000)).unwrap();
        assert_eq!(buf, [0xf4, 0x90, 0x90, 0x90, 0, 0, 0, 0]);
        assert_eq!(plan.vcpus.len(), 2);
        let top = 32u64 << 20;
        assert_eq!(plan.vcpus[1].regs.rsp, top - STACK_SIZE - 8);
        assert_eq!((plan.vcpus[1].regs.rdi, plan.vcpus[1].regs.rsi), (1, 2));
        assert_eq!(plan.vcpus[0].regs.rdx, top);
    }

    #[test]
    fn rejects_bad_images() {
        let area = PAYLOAD_MIN_ADDR..0x800000;
        assert!(matches!(
            parse(b"nope", area.clone()),
            Err(PayloadError::NotElf(_))
        ));
        let low = make_elf(0x1000, &[(0x1000, &[0x90], 1)]);
        assert!(matches!(
            parse(&low, area.clone()),
            Err(PayloadError::SegmentOutOfBounds { .. })
        ));
        let into_stacks = make_elf(0x7ff000, &[(0x7ff000, &[0x90], 0x2000)]);
        assert!(matches!(
            parse(&into_stacks, area.clone()),
            Err(PayloadError::SegmentOutOfBounds { .. })
        ));
        let overlap = make_elf(
            0x200000,
            &[(0x200000, &[0x90], 0x100), (0x200080, &[0x90], 1)],
        );
        assert!(matches!(
            parse(&overlap, area.clone()),
            Err(PayloadError::Overlap(0, 1))
        ));
        let bad_entry = make_elf(0x300000, &[(0x200000, &[0x90], 1)]);
        assert!(matches!(
            parse(&bad_entry, area.clone()),
            Err(PayloadError::EntryOutsideSegments(_))
        ));
        let mut truncated = make_elf(0x200000, &[(0x200000, &[0x90; 64], 64)]);
        truncated.truncate(truncated.len() - 10);
        assert!(matches!(
            parse(&truncated, area),
            Err(PayloadError::Corrupt(_))
        ));
    }

    #[test]
    fn every_truncation_of_a_valid_image_is_an_error_not_a_panic() {
        let elf = make_elf(0x200000, &[(0x200000, &[0x90; 32], 64)]);
        for len in 0..elf.len() {
            assert!(parse(&elf[..len], PAYLOAD_MIN_ADDR..0x800000).is_err());
        }
    }

    #[test]
    fn elf_from_code_loads_and_enters_at_its_address() {
        let elf = elf_from_code(0x30_0000, &[0xf4]);
        let parsed = parse(&elf, PAYLOAD_MIN_ADDR..0x80_0000).unwrap();
        assert_eq!(parsed.entry, 0x30_0000);
        assert_eq!(parsed.segments.len(), 1);
    }

    #[test]
    fn stacks_must_fit() {
        assert!(payload_area(0x120000, 2).is_err());
        assert_eq!(
            payload_area(0x800000, 1).unwrap(),
            PAYLOAD_MIN_ADDR..0x7f0000
        );
    }
}
