//! ACPI tables for Linux (and later firmware-less Windows loaders): RSDP, XSDT, FADT with
//! real PM1a blocks, MADT with one local APIC per vCPU and the IOAPIC, and a DSDT that
//! declares the S5 sleep type used for poweroff.
//!
//! Non-zero PM1a blocks matter beyond Linux: Hyper-V's loader refuses to start when a FADT
//! has zero PM1a addresses (reference §5, cloud-hypervisor 2026).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};

use crate::devices::acpi_pm::S5_SLP_TYP;
use crate::devices::{ACPI_SCI_IRQ, PM1A_CNT_PORT, PM1A_EVT_PORT};
use crate::memory::layout::{ACPI_TABLES_ADDR, ACPI_TABLES_END, IOAPIC_ADDR, LAPIC_ADDR};
use crate::memory::{Bytes, GuestAddress, GuestMemory};

const OEM_ID: [u8; 6] = *b"HVKVM ";
const OEM_TABLE_ID: [u8; 8] = *b"HVKVMTBL";
/// MADT flag: the platform also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1;

/// Errors writing ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the ACPI area.
    #[error(
        "ACPI tables for {cpus} vCPUs need {needed} bytes, more than the {available} reserved"
    )]
    TooLarge {
        /// vCPUs.
        cpus: u32,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// More vCPUs than xAPIC IDs in a MADT local APIC entry.
    #[error("{0} vCPUs exceed the 255 local APIC IDs a MADT xAPIC entry can describe")]
    TooManyCpus(u32),
    /// Guest memory write failed.
    #[error("cannot write ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

fn io_gas(port: u16, bytes: u8) -> GAS {
    let access = if bytes == 2 {
        AccessSize::WordAccess
    } else {
        AccessSize::DwordAccess
    };
    GAS::new(
        AddressSpace::SystemIo,
        bytes * 8,
        0,
        access,
        u64::from(port),
    )
}

fn dsdt() -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, 1);
    // \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved (ACPI 7.4.2).
    let typ = S5_SLP_TYP as u8;
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&typ, &typ, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut dsdt);
    dsdt.update_checksum();
    dsdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, 1).dsdt_64(dsdt_addr);
    f.sci_int = ACPI_SCI_IRQ.into();
    f.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.x_pm1a_evt_blk = io_gas(PM1A_EVT_PORT, 4);
    f.x_pm1a_cnt_blk = io_gas(PM1A_CNT_PORT, 2);
    // IAPC_BOOT_ARCH without bit 1 ("8042"): Linux then does not load its i8042 driver
    // (FADT revision >= 2 and no PNP PS/2 device), which otherwise polls the reset-only stub
    // thousands of times for a byte that never comes. Linux's reboot=k does not look at this
    // flag: it writes the reset command to port 0x64, which the stub still serves.
    f.iapc_boot_arch = 0u16.into();
    let f = f
        .flag(Flags::Wbinvd)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    bytes(&f.finalize())
}

fn madt(cpus: u32) -> Result<Vec<u8>, AcpiError> {
    if cpus > 255 {
        return Err(AcpiError::TooManyCpus(cpus));
    }
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        1,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for i in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(
            i as u8,
            i as u8,
            EnabledStatus::Enabled,
        ));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR as u32, 0));
    let mut out = bytes(&madt);
    // acpi_tables has no setter for the MADT flags; patch them and fix the checksum.
    out[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut out);
    Ok(out)
}

fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = 0u8.wrapping_sub(sum);
}

/// Writes all tables at [`ACPI_TABLES_ADDR`] and returns the RSDP address.
pub fn write_tables(mem: &GuestMemory, cpus: u32) -> Result<u64, AcpiError> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_TABLES_ADDR;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let dsdt = dsdt();
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(cpus)?;
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes(&xsdt);
    let end = xsdt_addr + xsdt.len() as u64;
    if end > ACPI_TABLES_END {
        return Err(AcpiError::TooLarge {
            cpus,
            needed: end - ACPI_TABLES_ADDR,
            available: ACPI_TABLES_END - ACPI_TABLES_ADDR,
        });
    }
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    for (addr, table) in [
        (rsdp_addr, &rsdp),
        (dsdt_addr, &dsdt),
        (fadt_addr, &fadt),
        (madt_addr, &madt),
        (xsdt_addr, &xsdt),
    ] {
        mem.write_slice(table, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_pm1a_blocks() {
        let f = fadt(0x1234);
        assert_eq!(&f[..4], b"FACP");
        assert!(checksum_ok(&f));
        // PM1a_EVT_BLK at offset 56, PM1a_CNT_BLK at 64 (ACPI 5.2.9).
        assert_eq!(u32::from_le_bytes(f[56..60].try_into().unwrap()), 0x600);
        assert_eq!(u32::from_le_bytes(f[64..68].try_into().unwrap()), 0x604);
        // IAPC_BOOT_ARCH at offset 109: no "8042" (bit 1), so Linux skips its i8042 probe;
        // FADT revision (offset 8) >= 2, the first one Linux reads that flag from.
        assert_eq!(u16::from_le_bytes(f[109..111].try_into().unwrap()) & 2, 0);
        assert!(f[8] >= 2);
        let m = madt(2).unwrap();
        assert_eq!(&m[..4], b"APIC");
        assert!(checksum_ok(&m));
        // Header 44 bytes, then two 8-byte local APIC entries and a 12-byte IOAPIC entry.
        assert_eq!(m.len(), 44 + 2 * 8 + 12);
        assert_eq!((m[44], m[52], m[60]), (0, 0, 1));
        let d = dsdt();
        assert!(checksum_ok(&d));
        assert!(d.windows(4).any(|w| w == b"_S5_"));
        assert!(madt(256).is_err());
    }

    #[test]
    fn rsdp_points_at_xsdt_listing_fadt_and_madt() {
        let mem = crate::memory::allocate(16).unwrap();
        let rsdp = write_tables(&mem, 4).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        let xsdt: u64 = mem.read_obj(GuestAddress(rsdp + 24)).unwrap();
        let mut hdr = [0u8; 4];
        mem.read_slice(&mut hdr, GuestAddress(xsdt)).unwrap();
        assert_eq!(&hdr, b"XSDT");
        let fadt: u64 = mem.read_obj(GuestAddress(xsdt + 36)).unwrap();
        mem.read_slice(&mut hdr, GuestAddress(fadt)).unwrap();
        assert_eq!(&hdr, b"FACP");
        let madt: u64 = mem.read_obj(GuestAddress(xsdt + 44)).unwrap();
        mem.read_slice(&mut hdr, GuestAddress(madt)).unwrap();
        assert_eq!(&hdr, b"APIC");
    }
}
