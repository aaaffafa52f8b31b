//! What counts as iasl complaining about a table, shared by `acpi/tests/iasl.rs` and the fuzz
//! corpus check (`fuzz/tests/acpi_corpus_iasl.rs`); both include this file by path.

/// Words iasl uses for problems: checksum and length complaints go to stdout/stderr
/// ("Firmware Warning (ACPI): Incorrect checksum"), structure problems into the .dsl
/// ("**** ACPI table terminates in the middle...", "Invalid zero length subtable").
pub const COMPLAINTS: [&str; 6] = [
    "Error",
    "Warning",
    "****",
    "Invalid",
    "Incorrect",
    "Unknown",
];

/// Whether `line` is one of the hex dump lines iasl appends to a data table ("Raw Table Data"):
/// `    00A0: 00 00 2A 2A 2A 2A ...  // ....****....` (older versions print no `//`). Its ASCII column shows the table's bytes, so
/// a serial number of 0x2a2a2a2a reads as "****" there; it is data, never a complaint.
fn is_hex_dump_line(line: &str) -> bool {
    let line = line.trim_start();
    let Some((offset, rest)) = line.split_once(": ") else {
        return false;
    };
    let first_byte = rest.split_whitespace().next().unwrap_or("");
    offset.len() >= 4
        && offset.chars().all(|c| c.is_ascii_hexdigit())
        && first_byte.len() == 2
        && first_byte.chars().all(|c| c.is_ascii_hexdigit())
}

/// The comment iasl puts after a `ToUUID` it has no name for (the Intel NVDIMM `_DSM` family's,
/// which a DIMM's `_DSM` compares with): a note on the decoding, not a complaint.
const UNNAMED_UUID: &str = "/* Unknown UUID */";

/// The first complaint word in iasl's output or .dsl text, hex dump lines and iasl's
/// unnamed-UUID comments left out.
pub fn complaint(text: &str) -> Option<&'static str> {
    text.lines()
        .filter(|line| !is_hex_dump_line(line))
        .map(|line| line.replace(UNNAMED_UUID, ""))
        .find_map(|line| COMPLAINTS.into_iter().find(|w| line.contains(w)))
}

#[cfg(test)]
mod tests {
    use super::complaint;

    #[test]
    fn an_unnamed_uuid_is_not_a_complaint() {
        let line =
            "If ((Arg0 == ToUUID (\"4309ac30-0d11-11e4-9191-0800200c9a66\") /* Unknown UUID */))";
        assert_eq!(complaint(line), None);
        assert_eq!(
            complaint("/* Unknown UUID */ Unknown opcode"),
            Some("Unknown")
        );
    }

    #[test]
    fn table_bytes_in_the_hex_dump_are_not_complaints() {
        let dump =
            "    00A0: 00 00 00 00 00 00 00 00 2A 2A 2A 2A 01 03 00 00  // ........****....\n";
        assert_eq!(complaint(dump), None);
        let dump = "  0000: 45 72 72 6F 72  Error\n";
        assert_eq!(complaint(dump), None);
    }

    #[test]
    fn complaints_outside_the_dump_are_found() {
        let text = "[000h 0000   4]   Signature : \"NFIT\"\n\
                    **** ACPI table terminates in the middle of a data structure!\n\
                        0000: 4E 46 49 54  // NFIT\n";
        assert_eq!(complaint(text), Some("****"));
        assert_eq!(
            complaint("Firmware Warning (ACPI): Incorrect checksum in table [NFIT]"),
            Some("Warning")
        );
    }
}
