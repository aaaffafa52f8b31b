//! Lays the tables out as one blob for guest memory and links them with absolute addresses.

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::desc::PlatformDesc;
use crate::error::AcpiError;
use crate::sdt::{oem_table_id, OEM_ID, OEM_REVISION};
use crate::{dsdt, fadt, madt, nfit, srat};

/// Length of an ACPI 2.0+ RSDP.
const RSDP_LEN: usize = 36;
/// Every table starts on an 8-byte boundary (the XSDT holds 64-bit pointers; ACPI recommends
/// natural alignment).
const TABLE_ALIGN: usize = 8;
/// Linux looks for "RSD PTR " on 16-byte boundaries of 0xE0000-0xFFFFF
/// (`acpi_tb_scan_memory_for_rsdp()`, `ACPI_RSDP_SCAN_STEP`).
const RSDP_ALIGN: u64 = 16;

/// Where one table sits inside [`AcpiTables::bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// The table header's signature, e.g. `*b"NFIT"` (the FADT's is `*b"FACP"`).
    pub signature: [u8; 4],
    /// Offset from the start of the blob; the guest address is `base + offset`.
    pub offset: usize,
    pub len: usize,
}

/// The tables as one blob, to be copied to guest memory at `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// RSDP at offset 0, then the tables in `tables` order; padding bytes are zero.
    pub bytes: Vec<u8>,
    /// Guest-physical address the blob was built for (all pointers inside assume it).
    pub base: u64,
    /// Guest-physical address of the RSDP (= `base`), for `boot_params.acpi_rsdp_addr` or the
    /// PVH start info.
    pub rsdp_addr: u64,
    /// XSDT, FACP, DSDT, APIC, (with NVDIMMs) NFIT and (when [`PlatformDesc::needs_srat`])
    /// SRAT, in blob order. The RSDP is not listed.
    pub tables: Vec<TableInfo>,
}

impl AcpiTables {
    /// The bytes of the first table with `signature`, if present.
    pub fn table(&self, signature: &[u8; 4]) -> Option<&[u8]> {
        self.tables
            .iter()
            .find(|t| &t.signature == signature)
            .map(|t| &self.bytes[t.offset..t.offset + t.len])
    }
}

fn align_up(x: usize, align: usize) -> usize {
    x.div_ceil(align) * align
}

/// Builds RSDP, XSDT, FADT, DSDT, MADT, (when `desc.nvdimms` is non-empty) NFIT and (when
/// some NVDIMM has a proximity domain, see [`PlatformDesc::needs_srat`]) SRAT as one contiguous
/// blob for guest-physical address `base` (16-byte aligned, e.g. 0xE0000), at most `max_len`
/// bytes long (e.g. 0x20000 to end at 1 MiB).
///
/// The RSDP (revision 2) comes first and points at the XSDT; the XSDT lists FADT, MADT, NFIT
/// and SRAT; the FADT points at the DSDT through X_DSDT. Every table is 8-byte aligned and
/// checksummed; every pointer is an absolute guest-physical address.
pub fn build_tables(
    desc: &PlatformDesc,
    base: u64,
    max_len: usize,
) -> Result<AcpiTables, AcpiError> {
    desc.validate()?;
    if !base.is_multiple_of(RSDP_ALIGN) {
        return Err(AcpiError::MisalignedBase { base });
    }

    // Tables that point nowhere first, so their lengths fix the layout.
    let dsdt = dsdt::build(desc);
    let madt = madt::build(desc);
    let nfit = (!desc.nvdimms.is_empty()).then(|| nfit::build(&desc.nvdimms));
    let srat = desc.needs_srat().then(|| srat::build(desc));

    // XSDT entries: FADT, MADT, NFIT, SRAT (the DSDT is reached through the FADT only).
    let xsdt_entries = 2 + usize::from(nfit.is_some()) + usize::from(srat.is_some());
    let xsdt_len = 36 + 8 * xsdt_entries;
    let fadt_len = acpi_tables::fadt::FADT::len();

    let mut tables = Vec::new();
    let mut end = RSDP_LEN;
    let mut place = |signature: [u8; 4], len: usize| {
        let offset = align_up(end, TABLE_ALIGN);
        end = offset + len;
        tables.push(TableInfo {
            signature,
            offset,
            len,
        });
        offset
    };
    let xsdt_off = place(*b"XSDT", xsdt_len);
    let fadt_off = place(fadt::SIGNATURE, fadt_len);
    let dsdt_off = place(dsdt::SIGNATURE, dsdt.len());
    let madt_off = place(madt::SIGNATURE, madt.len());
    let nfit_off = nfit.as_ref().map(|t| place(nfit::SIGNATURE, t.len()));
    let srat_off = srat.as_ref().map(|t| place(srat::SIGNATURE, t.len()));

    if end > max_len {
        return Err(AcpiError::TooLarge {
            needed: end,
            max_len,
        });
    }
    let addr = |offset: usize| -> Result<u64, AcpiError> {
        u64::try_from(offset)
            .ok()
            .and_then(|o| base.checked_add(o))
            .ok_or(AcpiError::AddressOverflow { base, len: end })
    };
    // Checks the last byte too, so every address below is representable.
    addr(end)?;

    let fadt = fadt::build(&desc.power, addr(dsdt_off)?);
    debug_assert_eq!(fadt.len(), fadt_len);

    let mut xsdt = XSDT::new(OEM_ID, oem_table_id(*b"XSDT"), OEM_REVISION);
    xsdt.add_entry(addr(fadt_off)?);
    xsdt.add_entry(addr(madt_off)?);
    for off in [nfit_off, srat_off].into_iter().flatten() {
        xsdt.add_entry(addr(off)?);
    }
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    debug_assert_eq!(xsdt_bytes.len(), xsdt_len);

    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, addr(xsdt_off)?).to_aml_bytes(&mut rsdp);
    debug_assert_eq!(rsdp.len(), RSDP_LEN);

    let mut bytes = vec![0u8; end];
    let mut put = |offset: usize, data: &[u8]| {
        bytes[offset..offset + data.len()].copy_from_slice(data);
    };
    put(0, &rsdp);
    put(xsdt_off, &xsdt_bytes);
    put(fadt_off, &fadt);
    put(dsdt_off, &dsdt);
    put(madt_off, &madt);
    for (off, table) in [(nfit_off, &nfit), (srat_off, &srat)] {
        if let (Some(off), Some(table)) = (off, table) {
            put(off, table);
        }
    }

    Ok(AcpiTables {
        bytes,
        base,
        rsdp_addr: base,
        tables,
    })
}
