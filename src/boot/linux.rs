//! Linux through the 64-bit boot protocol (Documentation/arch/x86/boot.rst): the kernel is
//! loaded, a zero page (`boot_params`) with the e820 map, command line and initrd is written,
//! and the BSP enters the kernel's 64-bit entry with RSI pointing at the zero page. The other
//! vCPUs wait for INIT/SIPI; Linux finds them through the ACPI MADT.
//!
//! A bzImage is decompressed on the host and its vmlinux ELF loaded directly: on hosts whose
//! CPL0 guest code is emulated, the in-guest decompressor alone costs minutes.

use std::io::Cursor;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};

use super::{acpi, long_mode, vmlinux, BootPlan, HostStep, VcpuBootState};
use crate::memory::layout::{self, CMDLINE_ADDR, CMDLINE_MAX, ZERO_PAGE_ADDR};
use crate::memory::{Bytes, GuestAddress, GuestMemory};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const BOOT_FLAG: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader type; Linux accepts it.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Highest address the initrd may end at when the kernel does not say (boot.rst default).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// `loadflags` bit: the kernel was loaded high (required for 64-bit entry).
const LOADED_HIGH: u8 = 1;
/// `loadflags` bit: the boot loader set `heap_end_ptr`.
const CAN_USE_HEAP: u8 = 0x80;
/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;

/// What to boot.
#[derive(Debug, Clone)]
pub struct LinuxImage {
    /// The kernel: bzImage or uncompressed vmlinux ELF.
    pub kernel: Vec<u8>,
    /// Optional initramfs.
    pub initrd: Option<Vec<u8>>,
    /// Kernel command line.
    pub cmdline: String,
}

/// Why Linux could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// linux-loader refused the kernel.
    #[error("cannot load the kernel image")]
    Load(#[source] linux_loader::loader::Error),
    /// Command line too long or with a NUL byte.
    #[error("kernel command line is {len} bytes; at most {max} without NUL bytes are supported")]
    Cmdline {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The initrd does not fit below its address limit above the kernel.
    #[error("the initrd ({size} bytes) does not fit in guest RAM above the kernel; add --memory")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
    },
    /// A vmlinux ELF (given, or extracted from a bzImage) that is not a loadable x86-64 kernel.
    #[error("the kernel is not a loadable vmlinux")]
    Vmlinux(#[source] vmlinux::VmlinuxError),
    /// A kernel segment that does not lie in guest RAM above the first MiB.
    #[error(
        "kernel segment {index} at {start:#x}..{end:#x} lies outside guest RAM \
         {min:#x}..{max:#x}; raise --memory, or pass a kernel linked at a lower physical address"
    )]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// First byte.
        start: u64,
        /// One past the last byte (u64::MAX when it wraps).
        end: u64,
        /// Lowest address a kernel segment may use.
        min: u64,
        /// End of low guest RAM.
        max: u64,
    },
    /// Guest memory write failed.
    #[error("cannot write {0} into guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
    /// Page tables or GDT.
    #[error(transparent)]
    Tables(#[from] long_mode::LongModeError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
}

/// The loaded kernel: entry point, end address, and the bzImage setup header if any.
struct LoadedKernel {
    entry: u64,
    end: u64,
    header: Option<linux_loader::loader::bootparam::setup_header>,
    format: String,
}

/// Checks that every PT_LOAD segment of a vmlinux (already checked by
/// [`vmlinux::check_vmlinux_elf`]: its program headers lie in the file) lies in low guest RAM
/// above the reserved first MiB.
pub fn check_kernel_segments(elf: &[u8], ram_size: u64) -> Result<(), LinuxError> {
    const PT_LOAD: u32 = 1;
    let field = |off: usize, len: usize| -> u64 {
        let mut w = [0u8; 8];
        if let Some(b) = elf.get(off..off + len) {
            w[..len].copy_from_slice(b);
        }
        u64::from_le_bytes(w)
    };
    let (min, max) = (layout::LOW_RESERVED_END, layout::low_ram_top(ram_size));
    let phoff = field(32, 8);
    let phentsize = field(54, 2);
    for index in 0..field(56, 2) {
        let Some(ph) = index
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok())
        else {
            break;
        };
        let (p_type, paddr, memsz) = (field(ph, 4) as u32, field(ph + 24, 8), field(ph + 40, 8));
        if p_type != PT_LOAD || memsz == 0 {
            continue;
        }
        let end = paddr.saturating_add(memsz);
        if paddr < min || end > max {
            return Err(LinuxError::SegmentOutsideRam {
                index: index as usize,
                start: paddr,
                end,
                min,
                max,
            });
        }
    }
    Ok(())
}

fn load_kernel(
    mem: &GuestMemory,
    ram_size: u64,
    kernel: &[u8],
    steps: &mut Vec<HostStep>,
) -> Result<LoadedKernel, LinuxError> {
    let highmem = Some(GuestAddress(layout::LOW_RESERVED_END));
    let load_elf = |image: &[u8], format: String, steps: &mut Vec<HostStep>| {
        vmlinux::check_vmlinux_elf(image).map_err(LinuxError::Vmlinux)?;
        check_kernel_segments(image, ram_size)?;
        let r = HostStep::time(steps, "copy the vmlinux segments", || {
            Elf::load(mem, None, &mut Cursor::new(image), highmem)
        })
        .map_err(LinuxError::Load)?;
        Ok(LoadedKernel {
            entry: r.kernel_load.0,
            end: r.kernel_end,
            header: None,
            format,
        })
    };
    if vmlinux::is_elf(kernel) {
        return load_elf(kernel, "vmlinux ELF".into(), steps);
    }
    // The vmlinux must fit in guest RAM, so no larger one is worth decompressing.
    let limit = usize::try_from(ram_size).unwrap_or(usize::MAX);
    let extracted = HostStep::time(steps, "decompress the bzImage", || {
        vmlinux::extract_vmlinux_within(kernel, limit)
    });
    match extracted {
        Ok(elf) => load_elf(&elf, "bzImage, decompressed on the host".into(), steps),
        // Its own decompressor would run out of guest RAM just the same.
        Err(e @ vmlinux::VmlinuxError::TooLarge { .. }) => Err(LinuxError::Vmlinux(e)),
        Err(e) => {
            log::info!("loading the bzImage as is (its own decompressor will run): {e}");
            let r = BzImage::load(mem, None, &mut Cursor::new(kernel), highmem)
                .map_err(LinuxError::Load)?;
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + BZIMAGE_ENTRY64_OFFSET,
                end: r.kernel_end,
                header: r.setup_header,
                format: "bzImage".into(),
            })
        }
    }
}

fn e820_map(ram_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, r#type| boot_e820_entry {
        addr,
        size: end - addr,
        r#type,
    };
    let mut map = vec![
        entry(0, layout::LOW_RAM_END, E820_RAM),
        entry(layout::LOW_RAM_END, layout::LOW_RESERVED_END, E820_RESERVED),
        entry(
            layout::LOW_RESERVED_END,
            layout::low_ram_top(ram_size),
            E820_RAM,
        ),
    ];
    if let Some(high) = ram_size
        .checked_sub(layout::MMIO_HOLE_START)
        .filter(|&h| h > 0)
    {
        map.push(entry(
            layout::MMIO_HOLE_END,
            layout::MMIO_HOLE_END + high,
            E820_RAM,
        ));
    }
    map
}

/// Loads `image` for `cpus` vCPUs and returns the boot plan (BSP runnable, APs waiting).
pub fn load(
    mem: &GuestMemory,
    ram_size: u64,
    cpus: u32,
    image: &LinuxImage,
) -> Result<BootPlan, LinuxError> {
    let mut steps = Vec::new();
    let kernel = load_kernel(mem, ram_size, &image.kernel, &mut steps)?;
    let cmdline = image.cmdline.as_bytes();
    if cmdline.len() >= CMDLINE_MAX || cmdline.contains(&0) {
        return Err(LinuxError::Cmdline {
            len: cmdline.len(),
            max: CMDLINE_MAX - 1,
        });
    }
    mem.write_slice(cmdline, GuestAddress(CMDLINE_ADDR))
        .and_then(|()| mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR + cmdline.len() as u64)))
        .map_err(|e| LinuxError::Write("the command line", e))?;

    let mut params = boot_params::default();
    if let Some(hdr) = kernel.header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = BOOT_FLAG;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = 0x100_0000;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;

    if let Some(initrd) = &image.initrd {
        let limit = match params.hdr.initrd_addr_max {
            0 => DEFAULT_INITRD_ADDR_MAX,
            max => u64::from(max),
        };
        let size = initrd.len() as u64;
        let top = layout::low_ram_top(ram_size).min(limit + 1);
        let addr = top
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= kernel.end)
            .ok_or(LinuxError::InitrdTooLarge { size })?;
        HostStep::time(&mut steps, "copy the initrd", || {
            mem.write_slice(initrd, GuestAddress(addr))
        })
        .map_err(|e| LinuxError::Write("the initrd", e))?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    HostStep::time(
        &mut steps,
        "e820, ACPI tables, zero page, page tables",
        || {
            let e820 = e820_map(ram_size);
            params.e820_entries = e820.len() as u8;
            params.e820_table[..e820.len()].copy_from_slice(&e820);
            params.acpi_rsdp_addr = acpi::write_tables(mem, cpus)?;
            mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
                .map_err(|e| LinuxError::Write("the zero page", e))?;
            long_mode::write_tables(mem)?;
            Ok::<(), LinuxError>(())
        },
    )?;

    let vcpus = (0..cpus)
        .map(|i| VcpuBootState {
            // The boot protocol needs RSI = zero page; the stack is the kernel's business.
            regs: long_mode::regs(kernel.entry, 0, [0, ZERO_PAGE_ADDR, 0]),
            sregs: long_mode::sregs(Default::default()),
            runnable: i == 0,
        })
        .collect();
    Ok(BootPlan {
        vcpus,
        description: format!(
            "Linux ({}), entry {:#x}, {cpus} vCPU(s), initrd {} bytes",
            kernel.format,
            kernel.entry,
            image.initrd.as_ref().map_or(0, Vec::len)
        ),
        host_steps: steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::payload::elf_from_code;

    fn image(kernel: Vec<u8>) -> LinuxImage {
        LinuxImage {
            kernel,
            initrd: None,
            cmdline: "console=ttyS0".into(),
        }
    }

    #[test]
    fn a_vmlinux_with_a_segment_outside_ram_is_refused_naming_it() {
        let mem = crate::memory::allocate(16).unwrap();
        let high = elf_from_code(0x1000_0000, &[0xf4]);
        let err = load(&mem, 16 << 20, 1, &image(high)).unwrap_err();
        assert!(
            matches!(
                err,
                LinuxError::SegmentOutsideRam {
                    index: 0,
                    start: 0x1000_0000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("raise --memory"), "{err}");
        let low = elf_from_code(0x8000, &[0xf4]);
        let err = load(&mem, 16 << 20, 1, &image(low)).unwrap_err();
        assert!(matches!(err, LinuxError::SegmentOutsideRam { .. }), "{err}");
        let fits = elf_from_code(0x20_0000, &[0xf4]);
        let plan = load(&mem, 16 << 20, 1, &image(fits)).unwrap();
        assert_eq!(plan.vcpus[0].regs.rip, 0x20_0000);
    }

    #[test]
    fn a_truncated_vmlinux_is_refused_before_loading() {
        let mem = crate::memory::allocate(16).unwrap();
        let elf = elf_from_code(0x20_0000, &[0xf4]);
        let err = load(&mem, 16 << 20, 1, &image(elf[..70].to_vec())).unwrap_err();
        assert!(matches!(err, LinuxError::Vmlinux(_)), "{err}");
    }

    #[test]
    fn e820_reserves_the_bios_area_and_skips_the_mmio_hole() {
        // boot_e820_entry is packed: copy fields out before comparing.
        let span = |e: &boot_e820_entry| ({ e.addr }, { e.size }, { e.r#type });
        let small: Vec<_> = e820_map(256 << 20).iter().map(span).collect();
        assert_eq!(
            small,
            vec![
                (0, layout::LOW_RAM_END, E820_RAM),
                (
                    layout::LOW_RAM_END,
                    (1 << 20) - layout::LOW_RAM_END,
                    E820_RESERVED
                ),
                (1 << 20, (256 << 20) - (1 << 20), E820_RAM),
            ]
        );
        let big: Vec<_> = e820_map(6 << 30).iter().map(span).collect();
        assert_eq!(big.len(), 4);
        assert_eq!(big[2].0 + big[2].1, layout::MMIO_HOLE_START);
        assert_eq!(
            big[3],
            (
                layout::MMIO_HOLE_END,
                (6 << 30) - layout::MMIO_HOLE_START,
                E820_RAM
            )
        );
    }
}
