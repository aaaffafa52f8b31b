//! Every ACPI blob the `acpi_tables` fuzz corpus builds disassembles cleanly with ACPICA's
//! `iasl -d` (package acpica-tools; a missing tool fails the test). The committed corpus is
//! always checked; `PMEMVMM_FUZZ_ACPI_CORPUS=DIR[:DIR...]` adds corpora a fuzz run grew
//! (`scripts/fuzz-smoke.sh` passes its own).

use std::path::{Path, PathBuf};
use std::process::Command;

use pmem_vmm_fuzz::platform::{check_tables, platform_from_bytes, ACPI_BASE, ACPI_MAX};

#[path = "../../acpi/tests/common/iasl_complaints.rs"]
mod iasl_complaints;

fn corpus_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/acpi_tables")];
    if let Ok(extra) = std::env::var("PMEMVMM_FUZZ_ACPI_CORPUS") {
        dirs.extend(std::env::split_paths(&extra));
    }
    dirs
}

fn iasl_clean(dat: &Path, dir: &Path) -> Result<(), String> {
    let out = Command::new("iasl")
        .arg("-d")
        .arg(dat)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run iasl ({e}): install it with `apt-get install acpica-tools`")
        });
    let mut text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Ok(dsl) = std::fs::read_to_string(dat.with_extension("dsl")) {
        text.push_str(&dsl);
    } else {
        return Err(format!("no .dsl for {}:\n{text}", dat.display()));
    }
    if !out.status.success() {
        return Err(format!("iasl -d {} failed:\n{text}", dat.display()));
    }
    match iasl_complaints::complaint(&text) {
        Some(word) => Err(format!("iasl -d {} says {word:?}:\n{text}", dat.display())),
        None => Ok(()),
    }
}

#[test]
fn every_corpus_blob_disassembles_cleanly() {
    let scratch = std::env::temp_dir().join(format!("pmem-vmm-fuzz-iasl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let (mut inputs, mut built, mut tables) = (0, 0, 0);
    let mut failures = Vec::new();
    for dir in corpus_dirs() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            inputs += 1;
            let Ok(t) = acpi::build_tables(&platform_from_bytes(&data), ACPI_BASE, ACPI_MAX) else {
                continue;
            };
            check_tables(&t);
            built += 1;
            for (i, info) in t.tables.iter().enumerate() {
                let sig = String::from_utf8_lossy(&info.signature).to_string();
                let dat = scratch.join(format!("{built}-{i}-{sig}.dat"));
                std::fs::write(&dat, &t.bytes[info.offset..info.offset + info.len]).unwrap();
                tables += 1;
                if let Err(e) = iasl_clean(&dat, &scratch) {
                    failures.push(format!("{} ({sig}): {e}", path.display()));
                }
            }
        }
    }
    eprintln!("{inputs} corpus inputs, {built} built, {tables} tables disassembled");
    assert!(
        built >= 3,
        "only {built} of {inputs} corpus inputs build tables: the corpus lost its valid platforms"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let _ = std::fs::remove_dir_all(&scratch);
}
