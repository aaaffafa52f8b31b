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
use crate::markers::{is_stall_report, normalize_console, HOST_BEGIN};

/// When to give up on a running host process before it exits by itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    /// Wall-clock limit for the whole run.
    pub timeout: Duration,
    /// Longest stretch without a console line; `None`: no limit but the timeout.
    pub silence: Option<Duration>,
    /// Stop the run when the console shows a kernel stall report ([`is_stall_report`]).
    pub stalls: bool,
    /// After this long without a console line while the host is idle, the run is inspected
    /// once (again after every new line), so that a stuck host is stopped then instead of at
    /// the silence limit ([`EARLY_LOOK`]).
    pub early_look: Duration,
}

/// How long after the first stall line the run goes on, so the console carries the whole report.
const STALL_GRACE: Duration = Duration::from_secs(3);

/// Why the testbed stopped a run that had not exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// The wall-clock limit expired.
    Timeout,
    /// The console printed this stall report.
    Stall(String),
    /// The console was silent for this long.
    Silence(Duration),
    /// The console was silent for this long while the host was idle, and two inspections
    /// [`EARLY_LOOK_GAP`] apart found it unable to go on ([`Inspection::stuck`]).
    Stuck(Duration),
}

/// What the inspection of a stopped or silent run found (nested: L1's state through QEMU's
/// monitor).
#[derive(Debug, Clone, Default)]
pub(crate) struct Inspection {
    /// Lines for the host view.
    pub report: String,
    /// The host cannot go on by itself (an L1 CPU that no longer takes interrupts): the run
    /// need not wait for the silence limit.
    pub stuck: bool,
}

/// [`Watch::early_look`]'s value for test runs: long enough that a guest doing quiet work is
/// seldom disturbed (an inspection costs a few milliseconds of QEMU's monitor), short against
/// the silence limit.
pub(crate) const EARLY_LOOK: Duration = Duration::from_secs(30);

/// A stuck verdict must hold at two inspections this far apart (a CPU caught in the instant
/// between an interrupt's request and its delivery is not stuck).
const EARLY_LOOK_GAP: Duration = Duration::from_secs(2);

/// What a finished (or killed) host process printed.
#[derive(Debug)]
pub(crate) struct Captured {
    /// Exit status; `None` when the testbed killed it (see `stopped`).
    pub status: Option<ExitStatus>,
    /// Why the testbed killed it, if it did.
    pub stopped: Option<Stopped>,
    /// The host's view of the process group when it was stopped: each thread's state and CPU
    /// time, and how much CPU the group used lately (empty when it exited by itself).
    pub host_view: String,
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

/// What the readers saw, for the watchdog: when the last line came and the first stall report.
#[derive(Debug)]
struct Seen {
    last_line: Instant,
    stall: Option<(Instant, String)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    buf: Shared,
    started: Instant,
    begin_at: Option<Arc<Mutex<Option<Duration>>>>,
    seen: Arc<Mutex<Seen>>,
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
                    lock(at).get_or_insert_with(|| started.elapsed());
                }
            }
            {
                let text = String::from_utf8_lossy(&line);
                let mut seen = lock(&seen);
                seen.last_line = Instant::now();
                if seen.stall.is_none() && is_stall_report(&text) {
                    seen.stall = Some((Instant::now(), normalize_console(text.trim_end())));
                }
            }
            if let Some(prefix) = &echo {
                let text = String::from_utf8_lossy(&line);
                eprint!("{prefix}{}", text.trim_end_matches(['\r', '\n']));
                eprintln!();
            }
            lock(&buf).extend_from_slice(&line);
        }
        let _ = done.send(());
    });
}

fn take(buf: &Shared) -> String {
    let bytes = std::mem::take(&mut *lock(buf));
    normalize_console(&String::from_utf8_lossy(&bytes))
}

/// Clock ticks per second for `/proc/PID/stat` CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf(3) only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `(comm, state, cpu seconds)` from a `/proc/.../stat` line (comm may hold spaces).
fn parse_stat(stat: &str, ticks: f64) -> Option<(String, char, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state is field 3, utime 14 and stime 15 (1-based, man proc).
    let state = rest.first()?.chars().next()?;
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((comm, state, (utime + stime) / ticks))
}

/// The processes in process group `pgid` (from `/proc/*/stat`, field 5).
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let close = s.rfind(')')?;
                    s[close + 1..]
                        .split_whitespace()
                        .nth(2)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(pgid)
        })
        .collect()
}

/// CPU seconds the whole group has used so far.
fn group_cpu(pgid: i32) -> f64 {
    let ticks = clock_ticks();
    group_members(pgid)
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| parse_stat(&s, ticks).map(|(_, _, cpu)| cpu))
        .sum()
}

/// Each thread of each process in the group: name, state, CPU seconds.
fn describe_group(pgid: i32) -> String {
    let ticks = clock_ticks();
    let mut out = String::new();
    for pid in group_members(pgid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        let mut tids: Vec<i32> = tasks
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        for tid in tids {
            if let Some((comm, state, cpu)) =
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
                    .ok()
                    .and_then(|s| parse_stat(&s, ticks))
            {
                out.push_str(&format!(
                    "  pid {pid} tid {tid} {comm:<16} state {state}  cpu {cpu:.1} s\n"
                ));
            }
        }
    }
    out
}

/// Whether the group has been idle (below [`IDLE_CPU_FRACTION`] of one core) over the sampled
/// window, which must span at least `need` (the silence limit, at most [`CPU_WINDOW`]) so a run
/// is never called idle on too short a record. Uses the once-a-second samples, so the 20 ms
/// watch loop reads no /proc while a busy run stays silent.
fn idle(samples: &std::collections::VecDeque<(Instant, f64)>, need: Duration) -> bool {
    let (Some((t0, c0)), Some((t1, c1))) = (samples.front(), samples.back()) else {
        return false;
    };
    let span = t1.duration_since(*t0);
    let need = need.min(CPU_WINDOW).saturating_sub(Duration::from_secs(2));
    span >= need && c1 - c0 < IDLE_CPU_FRACTION * span.as_secs_f64().max(1.0)
}

/// How far back the host view's "CPU lately" figure looks.
const CPU_WINDOW: Duration = Duration::from_secs(30);

/// A silent console stops the run only while the host is idle: a nested host waiting for a
/// timer interrupt that never comes uses next to no CPU (the stall in tests/README.md: ~2 s in
/// 5 minutes), while a guest that is busy and quiet (building a 16 GiB memmap on a loaded
/// machine) uses its share. Below this fraction of one core the host is idle.
const IDLE_CPU_FRACTION: f64 = 0.1;

/// Spawns `cmd` (stdin from /dev/null, stdout and stderr captured) and waits for it, killing its
/// process group when `watch` says so: timeout, a stall report on the console, or silence.
/// `echo` prefixes live copies of the output on stderr; `inspect`, when given, is asked before a
/// stopped run is killed, its report goes into the host view, and it is also asked after
/// [`EARLY_LOOK`] of idle silence, so that a stuck host is stopped at once.
pub(crate) fn run_captured(
    mut cmd: Command,
    watch: Watch,
    echo: Option<&str>,
    inspect: Option<&dyn Fn() -> Inspection>,
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
    let seen = Arc::new(Mutex::new(Seen {
        last_line: started,
        stall: None,
    }));
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    spawn_reader(
        stdout,
        out.clone(),
        started,
        Some(begin_at.clone()),
        seen.clone(),
        echo.map(|p| format!("{p} ")),
        done_tx.clone(),
    );
    spawn_reader(
        stderr,
        err.clone(),
        started,
        None,
        seen.clone(),
        echo.map(|p| format!("{p}! ")),
        done_tx,
    );

    let deadline = started + watch.timeout;
    let pgid = guard.pgid;
    // (when, group CPU seconds) samples for the host view's "CPU lately".
    let mut cpu_samples: std::collections::VecDeque<(Instant, f64)> = Default::default();
    let mut next_sample = started;
    let mut stopped = None;
    // The last line an early look was taken after, and a stuck verdict's report.
    let mut looked_after: Option<Instant> = None;
    let mut stuck_report: Option<String> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => return Err(Error::io(format!("waiting for {program}"), e)),
        }
        let now = Instant::now();
        if now >= next_sample {
            cpu_samples.push_back((now, group_cpu(pgid)));
            while cpu_samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > CPU_WINDOW)
            {
                cpu_samples.pop_front();
            }
            next_sample = now + Duration::from_secs(1);
        }
        let last_line = lock(&seen).last_line;
        if let Some(inspect) = inspect {
            let silent = now.duration_since(last_line);
            if looked_after != Some(last_line)
                && silent >= watch.early_look
                && idle(&cpu_samples, watch.early_look)
            {
                looked_after = Some(last_line);
                if inspect().stuck {
                    std::thread::sleep(EARLY_LOOK_GAP);
                    let again = inspect();
                    if again.stuck && lock(&seen).last_line == last_line {
                        stuck_report = Some(again.report);
                    }
                }
            }
        }
        let reason = {
            let seen = lock(&seen);
            match &seen.stall {
                Some((at, line)) if watch.stalls && now.duration_since(*at) >= STALL_GRACE => {
                    Some(Stopped::Stall(line.clone()))
                }
                _ if stuck_report.is_some() => {
                    Some(Stopped::Stuck(now.duration_since(seen.last_line)))
                }
                _ => match watch.silence {
                    Some(limit)
                        if now.duration_since(seen.last_line) >= limit
                            && idle(&cpu_samples, limit) =>
                    {
                        Some(Stopped::Silence(limit))
                    }
                    _ => (now >= deadline).then_some(Stopped::Timeout),
                },
            }
        };
        if let Some(reason) = reason {
            let mut view = describe_group(pgid);
            if let Some((t0, c0)) = cpu_samples.front() {
                view.push_str(&format!(
                    "  the group used {:.1} s of CPU in the last {:.0} s\n",
                    group_cpu(pgid) - c0,
                    now.duration_since(*t0).as_secs_f64()
                ));
            }
            match (stuck_report.take(), inspect) {
                (Some(report), _) => view.push_str(&report),
                (None, Some(inspect)) => view.push_str(&inspect().report),
                (None, None) => {}
            }
            guard.kill();
            let _ = child.wait();
            stopped = Some((reason, view));
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
    let (stopped, host_view) = match stopped {
        Some((reason, view)) => (Some(reason), view),
        None => (None, String::new()),
    };
    Ok(Captured {
        status,
        stopped,
        host_view,
        stdout: take(&out),
        stderr: take(&err),
        duration,
        begin_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(secs: u64) -> Watch {
        Watch {
            timeout: Duration::from_secs(secs),
            silence: None,
            stalls: true,
            early_look: EARLY_LOOK,
        }
    }

    /// A silent, idle run whose inspection says it is stuck, twice, stops after the early look,
    /// long before its silence limit, with the second report; one that is not stuck runs on.
    #[test]
    fn a_stuck_host_stops_at_the_early_look() {
        let looks = std::cell::Cell::new(0);
        let stuck = || {
            looks.set(looks.get() + 1);
            Inspection {
                report: format!("  look {}\n", looks.get()),
                stuck: true,
            }
        };
        let w = Watch {
            silence: Some(Duration::from_secs(60)),
            early_look: Duration::from_secs(3),
            ..watch(60)
        };
        let c = run_captured(sh("echo hello; sleep 60"), w, None, Some(&stuck)).unwrap();
        assert!(
            matches!(c.stopped, Some(Stopped::Stuck(_))),
            "{:?}",
            c.stopped
        );
        assert!(c.duration < Duration::from_secs(15), "{:?}", c.duration);
        assert_eq!(looks.get(), 2);
        assert!(c.host_view.ends_with("  look 2\n"), "{}", c.host_view);

        let fine = || Inspection::default();
        let w = Watch {
            timeout: Duration::from_secs(7),
            ..w
        };
        let c = run_captured(sh("echo hello; sleep 60"), w, None, Some(&fine)).unwrap();
        assert_eq!(c.stopped, Some(Stopped::Timeout));
    }

    #[test]
    fn a_stall_report_stops_the_run_within_the_grace() {
        let c = run_captured(
            sh(
                "echo boot; echo '[ 95.0] rcu: INFO: rcu_sched self-detected stall on CPU'; \
                echo more; sleep 60",
            ),
            watch(60),
            None,
            None,
        )
        .unwrap();
        assert!(c.status.is_none());
        assert!(
            matches!(&c.stopped, Some(Stopped::Stall(l)) if l.contains("self-detected stall")),
            "{:?}",
            c.stopped
        );
        assert!(
            c.duration < STALL_GRACE + Duration::from_secs(5),
            "{:?}",
            c.duration
        );
        assert!(c.stdout.contains("more"));
    }

    #[test]
    fn silence_stops_the_run() {
        let c = run_captured(
            sh("echo hello; sleep 60"),
            Watch {
                silence: Some(Duration::from_secs(1)),
                ..watch(60)
            },
            None,
            Some(&|| Inspection {
                report: "  inspected before the kill\n".into(),
                stuck: false,
            }),
        )
        .unwrap();
        assert_eq!(c.stopped, Some(Stopped::Silence(Duration::from_secs(1))));
        assert!(c.duration < Duration::from_secs(10), "{:?}", c.duration);
        assert!(c.host_view.contains("state"), "{}", c.host_view);
        assert!(
            c.host_view.ends_with("  inspected before the kill\n"),
            "{}",
            c.host_view
        );
    }

    /// A silent but busy host (a quiet guest at work on a loaded machine) is left to run: only
    /// the timeout stops it.
    #[test]
    fn a_silent_busy_host_is_not_a_stall() {
        let c = run_captured(
            sh("echo hello; while :; do :; done"),
            Watch {
                silence: Some(Duration::from_secs(1)),
                ..watch(5)
            },
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.stopped, Some(Stopped::Timeout));
    }

    #[test]
    fn stat_lines_parse_with_spaces_in_names() {
        let stat = "42 (qemu vcpu 0) S 1 42 42 0 -1 4194560 0 0 0 0 250 50 0 0 20 0 1 0 1 0 0";
        let (comm, state, cpu) = parse_stat(stat, 100.0).unwrap();
        assert_eq!((comm.as_str(), state), ("qemu vcpu 0", 'S'));
        assert!((cpu - 3.0).abs() < 1e-9, "{cpu}");
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn captures_output_and_status() {
        let c = run_captured(
            sh("echo a; echo @@HOST-BEGIN@@; echo b >&2; exit 3"),
            watch(10),
            None,
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
            Watch {
                timeout: Duration::from_millis(500),
                ..watch(0)
            },
            None,
            None,
        )
        .unwrap();
        assert!(c.status.is_none());
        assert_eq!(c.stopped, Some(Stopped::Timeout));
        assert!(c.host_view.contains("sleep"), "{}", c.host_view);
        assert_eq!(c.stdout, "started\n");
        // The background sleep held the pipe too; we still returned quickly.
        assert!(c.duration < Duration::from_secs(5), "{:?}", c.duration);
    }
}
