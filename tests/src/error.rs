//! One error type for the whole testbed.
//!
//! Every variant that comes out of a guest or host run carries the last console lines, because a
//! failing test on a nested TCG host is otherwise nearly impossible to diagnose from CI logs.

use std::io;
use std::time::Duration;

/// Result alias used throughout the testbed.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The first words of [`Error::L1Crashed`]'s text, which `scripts/check-retries.py` looks for.
pub const L1_CRASH_MARKER: &str = "testbed: the nested L1 host crashed";

/// The first line of a stopped nested run's host view when the script had started but no
/// guest had printed its init marker: a hang in early boot under QEMU TCG (see
/// `tests/README.md`, "Retries"), which `scripts/check-retries.py` forgives on a retry.
pub const EARLY_HANG_MARKER: &str = "testbed: stopped before any guest reached init (nested)";

/// The start of the line in a stopped nested run's host view when QEMU's monitor showed an L1
/// CPU halted with interrupts enabled while its local APIC held a deliverable vector
/// ([`crate::l1_probe`]): the emulated CPU no longer takes interrupts, which nothing running
/// in L1 can cause (`tests/README.md`, "L1 stops taking interrupts"), so
/// `scripts/check-retries.py` forgives a first try that showed it.
pub const L1_STUCK_MARKER: &str = "testbed: the nested L1 host stopped taking interrupts";

/// The start of the line a nested run prints on stderr when a guest's (or L1's) kernel crashed
/// in it ([`crate::markers::guest_crash_line`]): QEMU TCG's nested SVM corrupts guests at random
/// (`tests/README.md`, "The nested guest crash"), so `scripts/check-retries.py` forgives a first
/// try that printed it. Never printed in direct mode, where a guest crash is a real failure.
pub const GUEST_CRASH_MARKER: &str = "testbed: a kernel crashed in the nested host";

/// The start of the line a nested run prints on stderr when the monitor reported a guest's
/// interrupt lost on its way into the guest's CPU ([`crate::markers::lost_interrupt_line`]): QEMU
/// TCG's nested SVM loses interrupts it should deliver (`tests/README.md`, "Console output that
/// never came"), so `scripts/check-retries.py` forgives a first try that printed it. Never
/// printed in direct mode.
pub const LOST_INTERRUPT_MARKER: &str = "testbed: the nested host lost a guest's interrupt";

/// What went wrong while preparing or running a testbed host or guest.
#[derive(thiserror::Error)]
pub enum Error {
    /// The testbed cannot work here as configured (missing tool, bad env var, no KVM, ...).
    /// The message says what to do about it.
    #[error("testbed setup: {0}")]
    Setup(String),

    /// A failure cached from an earlier attempt in this process (artifacts and the mode are
    /// resolved once); the text is the original error's.
    #[error("{0}")]
    Earlier(String),

    /// A file-system or process operation failed.
    #[error("testbed: {what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error.
        source: io::Error,
    },

    /// A helper command (kernel build, initramfs build, cargo, ndctl, ldd) failed.
    #[error("testbed: `{cmd}` failed ({status}); its output ends with:\n{output}")]
    Command {
        /// The command line, for the reader.
        cmd: String,
        /// Exit status as text.
        status: String,
        /// Tail of its stdout and stderr.
        output: String,
    },

    /// The run did not finish within its timeout; the host (QEMU or `sh`) was killed.
    #[error("testbed: run timed out after {:.0?} and was killed; host processes:\n{host_view}last console lines:\n{tail}", .timeout)]
    Timeout {
        /// The timeout that expired.
        timeout: Duration,
        /// The host's view of the killed processes (threads, states, CPU time).
        host_view: String,
        /// Last console lines.
        tail: String,
    },

    /// The run was stopped early because a kernel on the console reported a stall, or the
    /// console went silent past the run's limit (see `tests/README.md`, nested timer stalls).
    #[error(
        "testbed: run stopped after {after:.1?}: {why}; host processes:\n{host_view}last console \
         lines:\n{tail}"
    )]
    Stall {
        /// What the watchdog saw.
        why: String,
        /// How long the run had gone when it was stopped (from when it had its host slot: a
        /// wait for another test's host is not the run's time).
        after: std::time::Duration,
        /// The host's view of the killed processes (threads, states, CPU time).
        host_view: String,
        /// Last console lines.
        tail: String,
    },

    /// The KVM host never started the test script, or stopped before it finished.
    #[error("testbed: {msg}; last console lines:\n{tail}")]
    Host {
        /// What is missing.
        msg: String,
        /// Last console lines.
        tail: String,
    },

    /// The nested L1 host (our kernel on QEMU TCG, the emulated machine the monitor runs on, not
    /// the monitor or its guest) died before the script finished: a panic, an oops or a triple
    /// fault in L1 ends QEMU through `panic=-1` and `-no-reboot`. The text starts with
    /// [`L1_CRASH_MARKER`]: `scripts/check-retries.py` forgives a retried test only for it.
    #[error(
        "{L1_CRASH_MARKER} before the script finished (QEMU {status}); last console lines:\n{tail}"
    )]
    L1Crashed {
        /// QEMU's exit status as text.
        status: String,
        /// Last console lines.
        tail: String,
    },

    /// The guest run did not behave as the test required.
    #[error("guest: {msg}; last console lines:\n{tail}")]
    Guest {
        /// What the test expected and did not get.
        msg: String,
        /// Last console lines.
        tail: String,
    },
}

/// `Debug` prints the same text as `Display` so that a test returning `Result<(), Error>` shows
/// readable multi-line console tails instead of an escaped struct dump.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// Wraps an I/O error with a short description of what we were doing.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The error's text, to cache it in a `OnceLock` (errors are not `Clone`) and re-raise it
    /// as [`Error::Earlier`].
    pub(crate) fn into_message(self) -> String {
        self.to_string()
    }

    /// A setup error with a message telling the user what to do.
    pub fn setup(msg: impl Into<String>) -> Self {
        Error::Setup(msg.into())
    }
}

/// Adds `.ctx("what")` to I/O results.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/check-retries.py` spells the markers it forgives itself: they must be these.
    #[test]
    fn check_retries_forgives_these_markers() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check-retries.py");
        let script = std::fs::read_to_string(path).unwrap();
        for marker in [
            L1_CRASH_MARKER,
            GUEST_CRASH_MARKER,
            EARLY_HANG_MARKER,
            L1_STUCK_MARKER,
            LOST_INTERRUPT_MARKER,
        ] {
            assert!(script.contains(&format!("\"{marker}\"")), "{marker:?}");
        }
    }
}
