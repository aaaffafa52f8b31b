//! Cross-checks with ACPICA's own tools (package acpica-tools), which share their table and
//! AML code with Linux: `iasl -d` must decode every table without complaint, `iasl` must compile
//! the same RSDP from source, and `acpiexec` must load the namespace and evaluate our objects.
//! A missing tool fails the test; it is never skipped.

mod common;
#[path = "common/iasl_complaints.rs"]
mod iasl_complaints;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use acpi::{build_tables, AcpiTables};
use common::*;

const INSTALL_HINT: &str = "install ACPICA's tools with `apt-get install acpica-tools`";

/// A scratch directory for one test, removed when the test passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("acpi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn run(tool: &str, args: &[&str], dir: &Path) -> Output {
    match Command::new(tool).args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{tool}` not found: {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot run `{tool}`: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_clean(what: &str, text: &str) {
    if let Some(word) = iasl_complaints::complaint(text) {
        panic!("{what} contains {word:?}:\n{text}");
    }
}

/// Writes every table as `<SIG>.dat`, disassembles it with `iasl -d` and returns the .dsl text
/// per signature.
fn disassemble(t: &AcpiTables, dir: &Path) -> Vec<([u8; 4], String)> {
    t.tables
        .iter()
        .map(|info| {
            let sig = String::from_utf8_lossy(&info.signature).to_string();
            let dat = format!("{sig}.dat");
            std::fs::write(
                dir.join(&dat),
                &t.bytes[info.offset..info.offset + info.len],
            )
            .unwrap();
            let out = run("iasl", &["-d", &dat], dir);
            assert!(
                out.status.success(),
                "iasl -d {dat} failed:\n{}",
                text(&out)
            );
            assert_clean(&format!("iasl -d {dat} output"), &text(&out));
            let dsl = std::fs::read_to_string(dir.join(format!("{sig}.dsl")))
                .unwrap_or_else(|e| panic!("no {sig}.dsl: {e}\n{}", text(&out)));
            assert_clean(&format!("{sig}.dsl"), &dsl);
            (info.signature, dsl)
        })
        .collect()
}

/// Writes every table but the XSDT into `dir` as `SIG.dat` (acpiexec builds its own RSDP and
/// XSDT from the tables it loads) and returns the file names, for acpiexec's command line.
fn acpiexec_files(t: &AcpiTables, dir: &Path) -> Vec<String> {
    t.tables
        .iter()
        .filter(|info| &info.signature != b"XSDT")
        .map(|info| {
            let name = format!("{}.dat", String::from_utf8_lossy(&info.signature));
            std::fs::write(
                dir.join(&name),
                &t.bytes[info.offset..info.offset + info.len],
            )
            .unwrap();
            name
        })
        .collect()
}

fn dsl<'a>(all: &'a [([u8; 4], String)], sig: &[u8; 4]) -> &'a str {
    &all.iter().find(|(s, _)| s == sig).unwrap().1
}

/// Asserts that the .dsl has a line `name : value` (iasl pads the name on the left).
fn assert_field(dsl: &str, name: &str, value: &str) {
    let found = dsl.lines().any(|l| {
        l.split_once(" : ")
            .is_some_and(|(k, v)| k.trim_end().ends_with(name) && v.trim().starts_with(value))
    });
    assert!(found, "no `{name} : {value}` in:\n{dsl}");
}

/// The values of every `name : value` line, in table order.
fn field_values<'a>(dsl: &'a str, name: &str) -> Vec<&'a str> {
    dsl.lines()
        .filter_map(|l| l.split_once(" : "))
        .filter(|(k, _)| k.trim_end().ends_with(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn count_field(dsl: &str, name: &str) -> usize {
    dsl.lines()
        .filter(|l| {
            l.split_once(" : ")
                .is_some_and(|(k, _)| k.trim_end().ends_with(name))
        })
        .count()
}

#[test]
fn iasl_decodes_every_table() {
    let dir = Scratch::new("iasl-decode");
    let mut ds = dimms(3);
    ds[1].base = 0x20_0000_0000;
    let t = build_tables(&platform(4, ds), BASE, MAX_LEN).unwrap();
    let all = disassemble(&t, dir.path());
    // DIMM 2 is on a NUMA node, so an SRAT comes last.
    assert_eq!(all.len(), 6);

    let xsdt = dsl(&all, b"XSDT");
    assert_eq!(count_field(xsdt, "ACPI Table Address   0"), 1);
    assert_field(
        xsdt,
        "ACPI Table Address   0",
        &format!("{:016X}", addr_of(&t, b"FACP")),
    );
    assert_field(
        xsdt,
        "ACPI Table Address   2",
        &format!("{:016X}", addr_of(&t, b"NFIT")),
    );
    assert_field(
        xsdt,
        "ACPI Table Address   3",
        &format!("{:016X}", addr_of(&t, b"SRAT")),
    );
    assert_eq!(count_field(xsdt, "ACPI Table Address   4"), 0);

    let fadt = dsl(&all, b"FACP");
    assert_field(fadt, "Hardware Reduced (V5)", "1");
    assert_field(fadt, "Reset Register Supported (V2)", "1");
    assert_field(fadt, "8042 Present on ports 60/64 (V2)", "0");
    assert_field(fadt, "CMOS RTC Not Present (V5)", "1");
    assert_field(fadt, "Value to cause reset", "06");
    assert_field(
        fadt,
        "DSDT Address",
        &format!("{:016X}", addr_of(&t, b"DSDT")),
    );
    // Address lines of the reset, sleep control and sleep status GAS, in table order.
    let addrs: Vec<&str> = fadt
        .lines()
        .filter(|l| {
            l.contains("Address : 00000000000003C") || l.contains("Address : 0000000000000CF9")
        })
        .collect();
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    assert_eq!(fadt.matches("[SystemIO]").count(), 3);
    assert_eq!(fadt.matches("[Byte Access:8]").count(), 3);

    let madt = dsl(&all, b"APIC");
    assert_field(madt, "Local Apic Address", "FEE00000");
    assert_field(madt, "PC-AT Compatibility", "1");
    assert_eq!(madt.matches("[Processor Local APIC]").count(), 4);
    assert_eq!(madt.matches("[I/O APIC]").count(), 1);
    assert_eq!(madt.matches("[Interrupt Source Override]").count(), 1);
    assert_field(madt, "Address", "FEC00000");

    let nfit = dsl(&all, b"NFIT");
    assert_eq!(nfit.matches("[System Physical Address Range]").count(), 3);
    assert_eq!(nfit.matches("[Memory Range Map]").count(), 3);
    assert_eq!(nfit.matches("[NVDIMM Control Region]").count(), 3);
    assert_eq!(nfit.matches("[Platform Capabilities]").count(), 1);
    assert_eq!(count_field(nfit, "Region Type GUID"), 3);
    assert_field(
        nfit,
        "Region Type GUID",
        "66F0D379-B4F3-4074-AC43-0D3318B78CDB",
    );
    assert_field(nfit, "Address Range Base", "0000000100000000");
    assert_field(nfit, "Address Range Base", "0000002000000000");
    assert_field(nfit, "Address Range Base", "0000000180000000");
    assert_eq!(count_field(nfit, "Address Range Length"), 3);
    assert_field(nfit, "Address Range Length", "0000000040000000");
    for h in ["00000001", "00000002", "00000003"] {
        assert_field(nfit, "Device Handle", h);
    }
    // dimms(): DIMM 1 read-only, DIMM 2 on proximity domain 1.
    assert_field(nfit, "Device not armed", "1");
    assert_field(nfit, "Proximity Domain Valid", "1");
    assert_field(nfit, "Proximity Domain", "00000001");
    assert_field(nfit, "Serial Number", "00001002");
    assert_field(nfit, "Code", "0301");
    assert_field(nfit, "Memory Flush to NVDIMM", "1");
    assert_field(nfit, "Cache Flush to NVDIMM", "0");

    let dsdt = dsl(&all, b"DSDT");
    for needle in [
        "Name (_HID, \"ACPI0012\"",
        "Device (NVDR)",
        "Device (NV00)",
        "Name (_ADR, 0x00000001)",
        "Name (_ADR, 0x00000002)",
        "Name (_ADR, 0x00000003)",
        "EisaId (\"PNP0501\")",
        "Device (COM1)",
        "IRQNoFlags ()",
        "{4}",
        "0x03F8,             // Range Minimum",
        "Name (\\_S5, Package (0x04)",
    ] {
        assert!(dsdt.contains(needle), "DSDT lacks {needle:?}:\n{dsdt}");
    }
}

/// The monitor's limits: 254 vCPUs and 64 NVDIMMs, every third on proximity domain 1.
#[test]
fn iasl_decodes_largest_platform() {
    let dir = Scratch::new("iasl-large");
    let t = build_tables(&platform(254, dimms(64)), BASE, 0x20000).unwrap();
    let all = disassemble(&t, dir.path());
    assert_eq!(
        dsl(&all, b"APIC").matches("[Processor Local APIC]").count(),
        254
    );
    // One handle per region mapping, plus one per flush hint structure (even DIMMs have one).
    assert_eq!(count_field(dsl(&all, b"NFIT"), "Device Handle"), 64 + 32);
    assert_eq!(count_field(dsl(&all, b"NFIT"), "Hint Count"), 32);
    assert!(dsl(&all, b"DSDT").contains("Device (NV3F)"));
    assert!(dsl(&all, b"DSDT").contains("Name (_ADR, 0x00000040)"));
    let srat = dsl(&all, b"SRAT");
    assert_eq!(
        srat.matches("[Processor Local APIC/SAPIC Affinity]")
            .count(),
        254
    );
    assert_eq!(srat.matches("[Memory Affinity]").count(), 1 + 64);
    // RAM first, then the 64 NVDIMMs.
    let mut non_volatile = vec!["0"];
    non_volatile.extend(["1"; 64]);
    assert_eq!(field_values(srat, "Non-Volatile"), non_volatile);
}

/// A serial number whose bytes are "****" shows in the raw hex dump iasl appends: data, which
/// the complaint check must not take for a complaint (a fuzz run grew such an input).
#[test]
fn iasl_table_bytes_that_spell_a_complaint_are_data() {
    let dir = Scratch::new("iasl-star-serial");
    let mut nvdimms = dimms(2);
    nvdimms[0].serial_number = u32::from_le_bytes(*b"****");
    nvdimms[1].serial_number = u32::from_le_bytes(*b"Erro");
    let t = build_tables(&platform(1, nvdimms), BASE, 0x20000).unwrap();
    let all = disassemble(&t, dir.path());
    assert!(
        dsl(&all, b"NFIT").contains("// "),
        "no hex dump to check against"
    );
    assert!(dsl(&all, b"NFIT").contains("****"));
}

/// The SRAT as ACPICA reads it: header, one enabled CPU per Local APIC in domain 0, RAM in
/// domain 0, NVDIMMs sorted by domain and flagged enabled | non-volatile, never hot-pluggable.
#[test]
fn iasl_decodes_srat() {
    let dir = Scratch::new("iasl-srat");
    let mut desc = platform(3, dimms(4));
    desc.ram = vec![(0, 3 * GIB), (0x1_0000_0000 + 4 * GIB, GIB / 2)];
    // DIMMs at 4, 5, 6, 7 GiB on domains 2, none, 1, 0x7f.
    for (d, domain) in desc
        .nvdimms
        .iter_mut()
        .zip([Some(2), None, Some(1), Some(0x7f)])
    {
        d.proximity_domain = domain;
    }
    let t = build_tables(&desc, BASE, MAX_LEN).unwrap();
    let all = disassemble(&t, dir.path());
    let srat = dsl(&all, b"SRAT");

    assert!(srat.contains("\"SRAT\"    [System Resource Affinity Table]"));
    assert_field(srat, "Revision", "03");
    assert_field(srat, "Table Revision", "00000001");
    assert_field(srat, "Oem Table ID", "\"PMEMSRAT\"");

    assert_eq!(
        srat.matches("[Processor Local APIC/SAPIC Affinity]")
            .count(),
        3
    );
    assert_eq!(field_values(srat, "Apic ID"), ["00", "01", "02"]);
    assert_eq!(field_values(srat, "Proximity Domain Low(8)"), ["00"; 3]);
    assert_eq!(
        field_values(srat, "Proximity Domain High(24)"),
        ["000000"; 3]
    );

    assert_eq!(srat.matches("[Memory Affinity]").count(), 2 + 4);
    assert_eq!(
        field_values(srat, "Proximity Domain"),
        ["00000000", "00000000", "00000000", "00000001", "00000002", "0000007F"]
    );
    assert_eq!(
        field_values(srat, "Base Address"),
        [
            "0000000000000000",
            "0000000200000000",
            "0000000140000000", // DIMM 1, no domain
            "0000000180000000", // DIMM 2, domain 1
            "0000000100000000", // DIMM 0, domain 2
            "00000001C0000000", // DIMM 3, domain 0x7f
        ]
    );
    assert_eq!(
        field_values(srat, "Address Length"),
        [
            "00000000C0000000",
            "0000000020000000",
            "0000000040000000",
            "0000000040000000",
            "0000000040000000",
            "0000000040000000",
        ]
    );
    // CPU flags (Enabled only), then memory flags.
    assert_eq!(
        field_values(srat, "Flags (decoded below)"),
        [
            "00000001", "00000001", "00000001", "00000001", "00000001", "00000005", "00000005",
            "00000005", "00000005",
        ]
    );
    assert_eq!(field_values(srat, "Enabled"), ["1"; 9]);
    assert_eq!(field_values(srat, "Hot Pluggable"), ["0"; 6]);
    assert_eq!(
        field_values(srat, "Non-Volatile"),
        ["0", "0", "1", "1", "1", "1"]
    );
}

/// iasl cannot disassemble a lone RSDP, but it compiles one from source and computes both
/// checksums itself: the result must equal our bytes.
#[test]
fn iasl_compiles_the_same_rsdp() {
    let dir = Scratch::new("iasl-rsdp");
    let t = build_tables(&platform(1, dimms(1)), BASE, MAX_LEN).unwrap();
    let source = format!(
        "[0008] Signature : \"RSD PTR \"\n\
         [0001] Checksum : 00\n\
         [0006] Oem ID : \"PMEMVM\"\n\
         [0001] Revision : 02\n\
         [0004] RSDT Address : 00000000\n\
         [0004] Length : 00000024\n\
         [0008] XSDT Address : {:016X}\n\
         [0001] Extended Checksum : 00\n\
         [0003] Reserved : 000000\n",
        addr_of(&t, b"XSDT")
    );
    std::fs::write(dir.path().join("rsdp.asl"), source).unwrap();
    let out = run("iasl", &["rsdp.asl"], dir.path());
    assert!(
        out.status.success(),
        "iasl rsdp.asl failed:\n{}",
        text(&out)
    );
    let compiled = std::fs::read(dir.path().join("rsdp.aml")).unwrap();
    assert_eq!(compiled.as_slice(), &t.bytes[..36]);
}

/// `acpiexec` runs ACPICA's table loader and AML interpreter, the code Linux runs: it must
/// accept the hardware-reduced FADT without a FACS, load the DSDT, and evaluate the objects
/// Linux reads.
#[test]
fn acpiexec_evaluates_namespace() {
    let dir = Scratch::new("acpiexec");
    // dimms(3): DIMM 2 is on a NUMA node, so the SRAT is loaded too.
    let t = build_tables(&platform(2, dimms(3)), BASE, MAX_LEN).unwrap();
    let files = acpiexec_files(&t, dir.path());
    let commands = "evaluate \\_S5_; evaluate \\_SB.NVDR._HID; \
                    evaluate \\_SB.NVDR.NV00._ADR; evaluate \\_SB.NVDR.NV01._ADR; \
                    evaluate \\_SB.COM1._CRS";
    let mut args = vec!["-b", commands];
    args.extend(files.iter().map(String::as_str));
    let out = run("acpiexec", &args, dir.path());
    let log = text(&out);
    assert!(out.status.success(), "acpiexec failed:\n{log}");
    assert_clean("acpiexec output", &log);
    for needle in [
        "ACPI: FACP",
        "ACPI: DSDT",
        "ACPI: APIC",
        "ACPI: NFIT",
        "ACPI: SRAT",
        "1 ACPI AML tables successfully acquired and loaded",
        // \_S5_ = Package { 5, 0, 0, 0 }
        "[Package] Contains 4 Elements:\n    [Integer] = 0000000000000005",
        "[String] Length 08 = \"ACPI0012\"",
        "Evaluating \\_SB.NVDR.NV00._ADR\nEvaluation of \\_SB.NVDR.NV00._ADR returned",
        "[Integer] = 0000000000000001",
        "[Integer] = 0000000000000002",
        // IO(Decode16, 0x3f8, 0x3f8, 1, 8), IRQNoFlags {4}, EndTag
        "47 01 F8 03 F8 03 01 08 22 10 00 79 00",
    ] {
        assert!(
            log.contains(needle),
            "acpiexec output lacks {needle:?}:\n{log}"
        );
    }
}

/// The power button: acpiexec runs the GED's `_EVT` and sees the notify on `PWRB`.
#[test]
fn acpiexec_runs_the_power_button_event() {
    let dir = Scratch::new("acpiexec-pwrb");
    let mut p = platform(1, Vec::new());
    p.power.power_button_gsi = Some(5);
    let t = build_tables(&p, BASE, MAX_LEN).unwrap();
    let files = acpiexec_files(&t, dir.path());
    let commands = "evaluate \\_SB.PWRB._HID; evaluate \\_SB.GED0._HID; \
                    evaluate \\_SB.GED0._CRS; evaluate \\_SB.GED0._EVT 5";
    let mut args = vec!["-b", commands];
    args.extend(files.iter().map(String::as_str));
    let out = run("acpiexec", &args, dir.path());
    let log = text(&out);
    assert!(out.status.success(), "acpiexec failed:\n{log}");
    assert_clean("acpiexec output", &log);
    for needle in [
        "[String] Length 08 = \"ACPI0013\"",
        // EisaId("PNP0C0C")
        "[Integer] = 000000000C0CD041",
        // Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {5}, EndTag
        "89 06 00 03 01 05 00 00 00 79 00",
        "Notify on [PWRB]",
    ] {
        assert!(
            log.contains(needle),
            "acpiexec output lacks {needle:?}:\n{log}"
        );
    }
}

/// NVDIMM hot-add and hot-remove: `_FIT` runs (acpiexec's simulated memory reads a zero length,
/// so an empty buffer), every possible DIMM has its device, the GED's second interrupt notifies
/// NVDR, its third runs the eject event (the simulated request register reads 0: no notify),
/// and a DIMM's `_EJ0` and `_OST` (with a status buffer, copied byte by byte) run cleanly.
#[test]
fn acpiexec_runs_fit_and_the_hotplug_event() {
    let dir = Scratch::new("acpiexec-fit");
    let mut p = platform(1, dimms(1));
    p.power.power_button_gsi = Some(5);
    p.nvdimm_hotplug = Some(acpi::NvdimmHotplugDesc {
        fit_addr: 0xfc000,
        fit_max: acpi::MAX_FIT_LEN as u32,
        gsi: 6,
        eject: Some(acpi::NvdimmEjectDesc {
            port: 0x0a20,
            gsi: 7,
        }),
    });
    let t = build_tables(&p, BASE, MAX_LEN).unwrap();
    let files = acpiexec_files(&t, dir.path());
    let commands = "evaluate \\_SB.NVDR._FIT; evaluate \\_SB.NVDR.NV3F._ADR; \
                    evaluate \\_SB.GED0._CRS; evaluate \\_SB.GED0._EVT 6; \
                    evaluate \\_SB.GED0._EVT 5; evaluate \\_SB.GED0._EVT 7; \
                    evaluate \\_SB.NVDR.NV02._EJ0 1; evaluate \\_SB.NVDR.NV02._OST 3 0x81 (69 6e 20 75 73 65)";
    let mut args = vec!["-b", commands];
    args.extend(files.iter().map(String::as_str));
    let out = run("acpiexec", &args, dir.path());
    let log = text(&out);
    assert!(out.status.success(), "acpiexec failed:\n{log}");
    assert_clean("acpiexec output", &log);
    for needle in [
        "Evaluation of \\_SB.NVDR._FIT returned object",
        "[Buffer] Length 00",
        // NFIT handle of DIMM 63
        "[Integer] = 0000000000000040",
        // Three interrupts, GSI 5, 6 and 7 (eject).
        "89 06 00 03 01 05 00 00 00 89 06 00 03 01 06 00",
        "00 00 89 06 00 03 01 07 00 00 00 79 00",
        // The eject request event, a DIMM's _EJ0 and its _OST with a reason buffer run.
        "No object was returned from evaluation of \\_SB.GED0._EVT",
        "No object was returned from evaluation of \\_SB.NVDR.NV02._EJ0",
        "No object was returned from evaluation of \\_SB.NVDR.NV02._OST",
        "Notify on [NVDR]",
        "Notify on [PWRB]",
    ] {
        assert!(
            log.contains(needle),
            "acpiexec output lacks {needle:?}:\n{log}"
        );
    }
}

/// The NVDIMM `_DSM` mailbox: `iasl -d` decodes the root device's regions, fields and `NCAL`
/// and each DIMM's `_DSM`; `acpiexec` runs `_DSM` with an input buffer in a one-element package
/// (what Linux passes) and with a package holding something else, without an AML error.
/// (acpiexec cannot pass an empty package or an empty buffer.) acpiexec simulates the page as
/// plain memory, so the "answer" it returns is what the request left in the page: its length
/// field overlays the handle, so `_DSM` of NFIT handle 2 returns the next 2 bytes (the
/// revision, 1), which shows the fields are written and read where the layout says; handle 17
/// is one byte too long for the short view and returns 17 bytes through the whole one.
///
/// The Intel function masks (function 0, revisions 1 and 2) are kept per DIMM: handle 1's
/// answer (1 byte, its revision) comes back in the 8-byte buffer it is kept in; asked again,
/// it is answered without a call (the page still holds the revision-2 request made in
/// between); after the GED's hot-add event (a new generation) it is read again.
#[test]
fn dsm_mailbox_decodes_and_runs() {
    let dir = Scratch::new("acpiexec-dsm");
    let mut p = platform(1, dimms(17));
    p.nvdimm_hotplug = Some(acpi::NvdimmHotplugDesc {
        fit_addr: 0xfc000,
        fit_max: acpi::MAX_FIT_LEN as u32,
        gsi: 6,
        eject: None,
    });
    p.nvdimm_dsm = Some(acpi::NvdimmDsmDesc {
        page_addr: 0xfb000,
        doorbell_port: 0x0a18,
        health_events: Some(acpi::HealthEventsDesc {
            gsi: 10,
            port: 0x0a38,
        }),
    });
    let t = build_tables(&p, BASE, MAX_LEN).unwrap();
    let all = disassemble(&t, dir.path());
    let dsdt = dsl(&all, b"DSDT");
    for needle in [
        // Health events: the GED's third interrupt, the register, one notify per DIMM.
        "OperationRegion (NHEV, SystemIO, 0x0A38, 0x08)",
        "NHLO,   32,",
        "If ((Arg0 == 0x0A))",
        "Local0 = NHLO",
        "Notify (\\_SB.NVDR.NV01, 0x81)",
        "OperationRegion (NDPG, SystemMemory, 0x000FB000, 0x1000)",
        "OperationRegion (NDBR, SystemIO, 0x0A18, 0x04)",
        "NHDL,   32,",
        "NARG,   32512",
        "NODT,   32736",
        "Method (NCAL, 5, Serialized)",
        "Method (_DSM, 4, Serialized)",
        "Return (\\_SB.NVDR.NCAL (Arg0, Arg1, Arg2, Arg3, 0x00000002))",
        "Name (NGEN, One)",
        "If ((Q1GN != \\_SB.NVDR.NGEN))",
        "Q2MK = \\_SB.NVDR.NCAL (Arg0, Arg1, Arg2, Arg3, 0x00000002)",
        "\\_SB.NVDR.NGEN += One",
        "NDBL = 0x000FB000",
        "NOSM,   128",
        "If ((NRLN < 0x11))",
        "Mid (NOSM, Zero, NRLN, Local1)",
        "Mid (NODT, Zero, NRLN, Local1)",
    ] {
        assert!(dsdt.contains(needle), "DSDT lacks {needle:?}:\n{dsdt}");
    }
    let files = acpiexec_files(&t, dir.path());
    let uuid = "(30 ac 09 43 11 0d e4 11 91 91 08 00 20 0c 9a 66)";
    let commands = format!(
        "evaluate \\_SB.NVDR.NV01._DSM {uuid} 1 5 [(00 00 00 00 10 00 00 00)]; \
         evaluate \\_SB.NVDR.NV00._DSM {uuid} 1 6 [(00 00 00 00 04 00 00 00 aa bb cc dd)]; \
         evaluate \\_SB.NVDR.NV10._DSM {uuid} 1 3 [(00)]; \
         evaluate \\_SB.NVDR.NV00._DSM {uuid} 1 0 [7]; \
         evaluate \\_SB.NVDR.NV00._DSM {uuid} 2 0 [7]; \
         evaluate \\_SB.NVDR.NV00._DSM {uuid} 1 0 [7]; \
         evaluate \\_SB.NVDR.NREV; \
         evaluate \\_SB.GED0._EVT 6; \
         evaluate \\_SB.NVDR.NV00._DSM {uuid} 1 0 [7]; \
         evaluate \\_SB.NVDR.NREV"
    );
    let mut args = vec!["-b", commands.as_str()];
    args.extend(files.iter().map(String::as_str));
    let out = run("acpiexec", &args, dir.path());
    let log = text(&out);
    assert!(out.status.success(), "acpiexec failed:\n{log}");
    assert_clean("acpiexec output", &log);
    assert_eq!(
        log.matches("_DSM returned object").count(),
        7,
        "every call returns:\n{log}"
    );
    // The kept masks, and the page's revision after the call that was not made (2) and after
    // the one made again in the new generation (1).
    let kept = |rev: u8| format!("[Buffer] Length 08 =     0000: {rev:02X} 00 00 00 00 00 00 00");
    let answers: Vec<usize> = [kept(1), kept(2)]
        .iter()
        .map(|k| log.matches(k.as_str()).count())
        .collect();
    assert_eq!(answers, [3, 1], "kept masks:\n{log}");
    let revisions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[Integer] ="))
        .map(|l| l.trim())
        .collect();
    assert_eq!(
        revisions,
        [
            "[Integer] = 0000000000000002",
            "[Integer] = 0000000000000001"
        ],
        "NREV:\n{log}"
    );
    assert!(
        log.contains("[Buffer] Length 02 =     0000: 01 00"),
        "handle 2's call:\n{log}"
    );
    // Handle 17's: NREV (1), NFUN (3), NALN (1), then the UUID's first 5 bytes.
    assert!(
        log.contains(
            "[Buffer] Length 11 = \n    0000: 01 00 00 00 03 00 00 00 01 00 00 00 30 AC 09 43"
        ),
        "handle 17's call:\n{log}"
    );
}
