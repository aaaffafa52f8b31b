//! Running a host process (QEMU or `sh`) with a timeout, capturing its console.
//!
//! The child gets its own process group so that a timeout kills everything it started (a
//! direct-mode script's vmm, for instance), and `PR_SET_PDEATHSIG` so that an interrupted test
//! run does not leave a TCG QEMU spinning on the machine.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::markers::{normalize_console, HOST_BEGIN};

/// What a finished (or killed) host process printed.
#[derive(Debug)]
pub(crate) struct Captured {
    /// Exit status; `None` when the timeout killed it.
    pub status: Option<ExitStatus>,
    /// Console (stdout), normalized.
    pub stdout: String,
    /// Stderr, normalized (QEMU's own complaints).
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub duration: Duration,
    /// When the begin marker appeared, from spawn.
    pub begin_at: Option<Duration>,
}

impl Captured {
    /// Console text for error messages: stdout, then stderr if any.
    pub fn console_for_errors(&self) -> String {
        if self.stderr.trim().is_empty() {
            self.stdout.clone()
        } else {
            format!("{}\n--- stderr ---\n{}", self.stdout, self.stderr)
        }
    }
}

/// Kills the child's whole process group unless disarmed.
struct GroupGuard {
    pgid: i32,
}

impl GroupGuard {
    fn kill(&self) {
        // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
        // process group we created for the child, and a stale group just yields ESRCH.
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

type Shared = Arc<Mutex<Vec<u8>>>;

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    buf: Shared,
    started: Instant,
    begin_at: Option<Arc<Mutex<Option<Duration>>>>,
    echo: Option<String>,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(at) = &begin_at {
                if line
                    .windows(HOST_BEGIN.len())
                    .any(|w| w == HOST_BEGIN.as_bytes())
                {
                    let mut at = at.lock().unwrap_or_else(|p| p.into_inner());
                    at.get_or_insert_with(|| started.elapsed());
                }
            }
            if let Some(prefix) = &echo {
                let text = String::from_utf8_lossy(&line);
                eprint!("{prefix}{}", text.trim_end_matches(['\r', '\n']));
                eprintln!();
            }
            buf.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&line);
        }
        let _ = done.send(());
    });
}

fn take(buf: &Shared) -> String {
    let bytes = std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()));
    normalize_console(&String::from_utf8_lossy(&bytes))
}

/// Spawns `cmd` (stdin from /dev/null, stdout and stderr captured), waits up to `timeout`,
/// and kills its process group on timeout. `echo` prefixes live copies of the output on stderr.
pub(crate) fn run_captured(
    mut cmd: Command,
    timeout: Duration,
    echo: Option<&str>,
) -> Result<Captured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) and
    // reads errno, both async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = format!("{:?}", cmd.get_program());
    let started = Instant::now();
    let mut child: Child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("starting {program}"), e))?;
    let guard = GroupGuard {
        pgid: child.id() as i32,
    };

    let out: Shared = Arc::default();
    let err: Shared = Arc::default();
    let begin_at = Arc::new(Mutex::new(None));
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    spawn_reader(
        stdout,
        out.clone(),
        started,
        Some(begin_at.clone()),
        echo.map(|p| format!("{p} ")),
        done_tx.clone(),
    );
    spawn_reader(
        stderr,
        err.clone(),
        started,
        None,
        echo.map(|p| format!("{p}! ")),
        done_tx,
    );

    let deadline = started + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => return Err(Error::io(format!("waiting for {program}"), e)),
        }
        if Instant::now() >= deadline {
            guard.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let duration = started.elapsed();
    // Anything the child left behind in its group goes too, so the pipes reach EOF.
    drop(guard);
    // Bounded: a grandchild that escaped the process group could hold a pipe open forever.
    let until = Instant::now() + Duration::from_secs(5);
    for _ in 0..2 {
        let left = until.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let begin_at = *begin_at.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Captured {
        status,
        stdout: take(&out),
        stderr: take(&err),
        duration,
        begin_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn captures_output_and_status() {
        let c = run_captured(
            sh("echo a; echo @@HOST-BEGIN@@; echo b >&2; exit 3"),
            Duration::from_secs(10),
            None,
        )
        .unwrap();
        assert_eq!(c.status.unwrap().code(), Some(3));
        assert_eq!(c.stdout, "a\n@@HOST-BEGIN@@\n");
        assert_eq!(c.stderr, "b\n");
        assert!(c.begin_at.is_some());
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let c = run_captured(
            sh("echo started; sleep 30 & sleep 30; echo never"),
            Duration::from_millis(500),
            None,
        )
        .unwrap();
        assert!(c.status.is_none());
        assert_eq!(c.stdout, "started\n");
        // The background sleep held the pipe too; we still returned quickly.
        assert!(c.duration < Duration::from_secs(5), "{:?}", c.duration);
    }
}
