//! Helpers shared by the pmem modules' unit tests.

use std::process::Command;

/// Fails the calling test unless `ndctl` runs: the tests that cross-check the info block against
/// `ndctl write-infoblock` / `ndctl read-infoblock` need it (CI installs it).
pub(crate) fn require_ndctl() {
    let found = Command::new("ndctl").arg("--version").output();
    match found {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "ndctl is not installed (or not on PATH): this test cross-checks the info block \
             against `ndctl write-infoblock` / `ndctl read-infoblock`. Install it \
             (Debian/Ubuntu: `apt-get install ndctl`) and run the tests again."
        ),
    }
}
