//! Finding the shared libraries a host binary needs, so it can run inside the L1 initramfs
//! (which has no libc of its own: everything else there is busybox-static).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// Library paths named in `ldd` output, in order, without the vDSO and duplicates.
pub fn parse_ldd(output: &str) -> Vec<PathBuf> {
    let mut libs: Vec<PathBuf> = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
        let candidate = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line,
        };
        let path = candidate.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            let p = PathBuf::from(path);
            if !libs.contains(&p) {
                libs.push(p);
            }
        }
    }
    libs
}

/// The shared libraries `binary` needs (empty for a static binary).
pub fn shared_libs(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| Error::io("running ldd (install libc-bin)", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // ldd exits 1 for static binaries; that is not an error.
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(Error::Command {
            cmd: format!("ldd {}", binary.display()),
            status: out.status.to_string(),
            output: format!("{stdout}{stderr}"),
        });
    }
    if stdout.contains("not found") {
        return Err(Error::Command {
            cmd: format!("ldd {}", binary.display()),
            status: "missing libraries".into(),
            output: stdout.into_owned(),
        });
    }
    Ok(parse_ldd(&stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_glibc_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn static_binary_has_no_libs() {
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn real_ldd_on_sh() {
        let libs = shared_libs(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }
}
