//! Shared pieces of every table: the OEM identity in the standard header and a little-endian
//! writer for fixed-layout sub-structures.
//!
//! Headers, lengths and checksums come from `acpi_tables::sdt::Sdt`, which recomputes the
//! checksum on every append; the creator id/revision are that crate's ("RVAT" 0x01000000).

use acpi_tables::sdt::Sdt;

/// OEM ID in every table header and in the RSDP.
pub const OEM_ID: [u8; 6] = *b"PMEMVM";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;

/// OEM table id of the table with `signature`: "PMEM" followed by the signature, so that
/// each table is recognisable in a dump (e.g. "PMEMNFIT").
pub fn oem_table_id(signature: [u8; 4]) -> [u8; 8] {
    let mut id = *b"PMEM____";
    id[4..].copy_from_slice(&signature);
    id
}

/// A table with a zeroed body of `len` bytes (at least the 36-byte header) and our OEM fields.
pub(crate) fn new_table(signature: [u8; 4], len: u32, revision: u8) -> Sdt {
    Sdt::new(
        signature,
        len,
        revision,
        OEM_ID,
        oem_table_id(signature),
        OEM_REVISION,
    )
}

/// Little-endian serialiser for the fixed-layout structures inside MADT and NFIT. Writing the
/// fields one by one in spec order keeps each layout readable next to its spec table.
#[derive(Default)]
pub(crate) struct Le(Vec<u8>);

impl Le {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// `n` reserved (zero) bytes.
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_ids() {
        assert_eq!(&oem_table_id(*b"NFIT"), b"PMEMNFIT");
        let t = new_table(*b"TEST", 40, 3);
        let b = t.as_slice();
        assert_eq!(b.len(), 40);
        assert_eq!(&b[0..4], b"TEST");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 40);
        assert_eq!(b[8], 3);
        assert_eq!(&b[10..16], b"PMEMVM");
        assert_eq!(&b[16..24], b"PMEMTEST");
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
    }

    #[test]
    fn le_writer() {
        let mut w = Le::default();
        w.u8(1)
            .u16(0x0302)
            .u32(0x0706_0504)
            .u64(0x0f0e_0d0c_0b0a_0908)
            .zeros(2);
        assert_eq!(
            w.as_slice(),
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 0]
        );
        assert_eq!(w.len(), 17);
    }
}
