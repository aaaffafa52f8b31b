//! L1's own state, read through QEMU's human monitor when the testbed stops a nested run: what
//! the emulated machine was waiting for when its console went silent.
//!
//! A nested run that stalls leaves an idle QEMU and a silent console, and the processes on this
//! machine say nothing about why. QEMU can: whether each L1 CPU is halted and with interrupts
//! enabled, each local APIC's requested (IRR) and in-service (ISR) vectors, priority and timer,
//! the I/O APIC's IRQ 4 pin and L1's console UART (COM1). A CPU halted with interrupts enabled
//! while its APIC holds a vector above its priority is an emulated CPU that stopped taking
//! interrupts ([`L1_STUCK_MARKER`], tests/README.md "L1 stops taking interrupts").

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::L1_STUCK_MARKER;
use crate::process::Inspection;

/// The monitor socket's name in a run's directory.
const SOCKET: &str = "qemu-monitor.sock";

/// The monitor socket of the run in `run_dir`; `None` when its path does not fit a Unix socket
/// address (108 bytes with the NUL: a long `TMPDIR`), where QEMU would refuse to start.
fn socket(run_dir: &Path) -> Option<PathBuf> {
    const SUN_PATH_MAX: usize = 107;
    let socket = run_dir.join(SOCKET);
    (socket.as_os_str().len() <= SUN_PATH_MAX).then_some(socket)
}

/// QEMU's arguments that serve its human monitor on the run's [`socket`]; none where there is
/// none (the probe then says it is not available).
pub(crate) fn monitor_args(run_dir: &Path) -> Vec<String> {
    let Some(socket) = socket(run_dir) else {
        return Vec::new();
    };
    vec![
        "-monitor".into(),
        format!(
            "unix:{},server=on,wait=off",
            crate::nested::qemu_opt_escape(&socket.to_string_lossy())
        ),
    ]
}

/// How long the whole probe may take: it runs while a stopped run waits to be killed.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

const PROMPT: &str = "(qemu) ";

/// COM1's registers as `i /b PORT` reads them (interrupt enable, line status, modem control).
/// The interrupt identification register is left alone: reading it acknowledges an interrupt.
const UART_PORTS: [(&str, u16); 3] = [("IER", 0x3f9), ("LSR", 0x3fd), ("MCR", 0x3fc)];

/// Asks the QEMU monitor of the run in `run_dir` about L1's `cpus` CPUs: the answer as indented
/// lines for a stopped run's report (first, when it applies, the [`L1_STUCK_MARKER`] verdict,
/// which also makes the inspection `stuck`), or one line saying why it could not.
pub(crate) fn inspect(run_dir: &Path, cpus: u32) -> Inspection {
    let session = socket(run_dir)
        .ok_or_else(|| std::io::Error::other("its socket path is too long for an address"))
        .and_then(|socket| Session::open(&socket));
    match session.and_then(|mut s| report(&mut s, cpus)) {
        Ok((report, stuck)) => Inspection { report, stuck },
        Err(e) => Inspection {
            report: format!("  L1 (QEMU monitor): not available: {e}\n"),
            stuck: false,
        },
    }
}

fn report(s: &mut Session, cpus: u32) -> std::io::Result<(String, bool)> {
    let regs = s.command("info registers -a")?;
    let flags: Vec<&str> = regs.lines().filter(|l| l.contains("HLT=")).collect();
    let mut state = Vec::new();
    let mut lines = String::new();
    for cpu in 0..cpus {
        s.command(&format!("cpu {cpu}"))?;
        let lapic = s.command("info lapic")?;
        let regs_line = flags.get(cpu as usize).copied().unwrap_or("");
        state.push(CpuState::parse(regs_line, &lapic));
        let keep: Vec<&str> = lapic
            .lines()
            .map(str::trim)
            .filter(|l| {
                ["LVTT", "Timer", "ISR", "IRR", "APR"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .collect();
        lines.push_str(&format!("    cpu {cpu}: {}\n", regs_line.trim()));
        lines.push_str(&format!("    cpu {cpu} local APIC: {}\n", keep.join(" | ")));
    }
    let pic = s.command("info pic")?;
    for line in pic
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("pin 4 "))
    {
        lines.push_str(&format!("    I/O APIC {line}\n"));
    }
    let mut uart = Vec::new();
    for (name, port) in UART_PORTS {
        let answer = s.command(&format!("i /b {port:#x}"))?;
        let value = answer
            .lines()
            .find_map(|l| l.split_once("] = ").map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| "?".into());
        uart.push(format!("{name} {value}"));
    }
    lines.push_str(&format!("    COM1: {}\n", uart.join(" ")));
    let mut out = String::new();
    let verdict = verdict(&state);
    if let Some(v) = &verdict {
        out.push_str(&format!("  {v}\n"));
    }
    out.push_str("  L1 as QEMU sees it:\n");
    out.push_str(&lines);
    Ok((out, verdict.is_some()))
}

/// The [`L1_STUCK_MARKER`] line when some CPU is halted with interrupts enabled and a vector
/// pending above its priority (the first such CPU is named).
fn verdict(cpus: &[CpuState]) -> Option<String> {
    cpus.iter().enumerate().find_map(|(i, c)| {
        c.ignored_vector().map(|v| {
            format!(
                "{L1_STUCK_MARKER} (QEMU TCG): cpu {i} is halted with interrupts enabled and \
                 vector {v} requested at its local APIC"
            )
        })
    })
}

/// One L1 CPU as QEMU's monitor describes it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct CpuState {
    /// `HLT=1` in `info registers`.
    halted: bool,
    /// RFLAGS.IF.
    interrupts_enabled: bool,
    /// Vectors requested (IRR) and in service (ISR).
    irr: Vec<u8>,
    isr: Vec<u8>,
    /// The processor priority (PPR), `None` when the answer did not carry it.
    ppr: Option<u8>,
}

impl CpuState {
    /// From the CPU's `info registers` line with `HLT=` and its `info lapic` answer.
    fn parse(regs: &str, lapic: &str) -> CpuState {
        let field = |name: &str| {
            regs.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
        };
        let rflags = field("RFL=")
            .or_else(|| field("EFL="))
            .and_then(|v| u64::from_str_radix(&v, 16).ok());
        let vectors = |name: &str| -> Vec<u8> {
            lapic
                .lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|w| {
                            let digits: String =
                                w.chars().take_while(char::is_ascii_digit).collect();
                            digits.parse().ok()
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let ppr = lapic.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "PPR")?;
            u8::from_str_radix(words.next()?.trim_start_matches("0x"), 16).ok()
        });
        CpuState {
            halted: field("HLT=").as_deref() == Some("1"),
            interrupts_enabled: rflags.is_some_and(|f| f & 0x200 != 0),
            irr: vectors("IRR"),
            isr: vectors("ISR"),
            ppr,
        }
    }

    /// A requested vector this CPU should be taking but is not: it is halted with interrupts
    /// enabled, and the vector's priority class is above the processor priority (which covers
    /// the task priority and anything in service).
    fn ignored_vector(&self) -> Option<u8> {
        if !self.halted || !self.interrupts_enabled {
            return None;
        }
        let ppr = self.ppr?;
        let in_service = self.isr.iter().max().copied().unwrap_or(0);
        self.irr
            .iter()
            .copied()
            .filter(|v| v >> 4 > ppr >> 4 && v >> 4 > in_service >> 4)
            .max()
    }
}

/// One connection to QEMU's human monitor, with one deadline for everything asked on it.
struct Session {
    stream: UnixStream,
    deadline: Instant,
}

impl Session {
    fn open(socket: &Path) -> std::io::Result<Session> {
        let stream = UnixStream::connect(socket)?;
        let mut s = Session {
            stream,
            deadline: Instant::now() + PROBE_LIMIT,
        };
        s.until_prompt()?; // the banner
        Ok(s)
    }

    fn command(&mut self, cmd: &str) -> std::io::Result<String> {
        self.stream.write_all(format!("{cmd}\n").as_bytes())?;
        let answer = self.until_prompt()?;
        // The monitor echoes the command line first.
        Ok(answer
            .split_once('\n')
            .map_or(String::new(), |(_, rest)| rest.to_string()))
    }

    /// Everything up to the next prompt, with terminal escape sequences and carriage returns
    /// removed.
    fn until_prompt(&mut self) -> std::io::Result<String> {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no prompt from the monitor in time",
                ));
            }
            self.stream.set_read_timeout(Some(left))?;
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            raw.extend_from_slice(&buf[..n]);
            let text = strip_escapes(&String::from_utf8_lossy(&raw));
            if let Some(body) = text.strip_suffix(PROMPT) {
                return Ok(body.to_string());
            }
        }
    }
}

/// Drops ANSI escape sequences (`ESC [ ... letter`) and carriage returns.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2's answers from the run that found it (console_flood, 2026-12-03): cpu 0 halted
    /// with IF set and its timer vector 236 requested; cpu 1 halted with nothing requested.
    const REGS_CPU0: &str =
        "RIP=ffffffff8142e8ed RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1";
    const LAPIC_STUCK: &str = "dumping local APIC state for CPU 0 \n\n\
        LVTT\t 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)\n\
        Timer\t DCR=0x3 (divide by 16) initial_count = 67602 current_count = 0\n\
        SPIV\t 0x000001ff APIC enabled, focus=off, spurious vec 255\n\
        ESR\t 0x00000000\nISR\t (none)\nIRR\t 236\n\n\
        APR 0x00 TPR 0x00 DFR 0x0f LDR 0x00 PPR 0x00\n";

    fn lapic(isr: &str, irr: &str, ppr: &str) -> String {
        format!("ISR\t {isr}\nIRR\t {irr}\n\nAPR 0x00 TPR 0x00 DFR 0x0f LDR 0x00 PPR {ppr}\n")
    }

    #[test]
    fn a_halted_cpu_ignoring_its_timer_is_named() {
        let c = CpuState::parse(REGS_CPU0, &lapic("(none)", "236", "0x00"));
        assert_eq!(
            c,
            CpuState {
                halted: true,
                interrupts_enabled: true,
                irr: vec![236],
                isr: vec![],
                ppr: Some(0),
            }
        );
        assert_eq!(c.ignored_vector(), Some(236));
        let idle = CpuState::parse(REGS_CPU0, &lapic("(none)", "(none)", "0x00"));
        let v = verdict(&[idle, c]).unwrap();
        assert!(v.starts_with(L1_STUCK_MARKER), "{v}");
        assert!(
            v.contains("cpu 1 is halted") && v.contains("vector 236"),
            "{v}"
        );
    }

    #[test]
    fn what_a_cpu_may_leave_pending_is_not_named() {
        let cases = [
            // running, or interrupts off: it takes the vector when it gets there
            ("RFL=00000246 HLT=0", lapic("(none)", "236", "0x00")),
            ("RFL=00000046 HLT=1", lapic("(none)", "236", "0x00")),
            // blocked by the priority or by a higher vector in service
            ("RFL=00000246 HLT=1", lapic("(none)", "236", "0xe0")),
            ("RFL=00000246 HLT=1", lapic("239", "236", "0x00")),
            // nothing requested, or an answer without the priority
            ("RFL=00000246 HLT=1", lapic("(none)", "(none)", "0x00")),
            ("RFL=00000246 HLT=1", "IRR\t 236\n".to_string()),
        ];
        for (regs, lapic) in cases {
            let c = CpuState::parse(regs, &lapic);
            assert_eq!(c.ignored_vector(), None, "{regs} {lapic:?} {c:?}");
        }
    }

    #[test]
    fn a_whole_answer_parses() {
        let c = CpuState::parse(REGS_CPU0, LAPIC_STUCK);
        assert_eq!(
            (c.irr.as_slice(), c.isr.len(), c.ppr),
            (&[236u8][..], 0, Some(0))
        );
        assert_eq!(c.ignored_vector(), Some(236));
    }

    #[test]
    fn a_socket_path_too_long_for_an_address_is_left_out() {
        let args = monitor_args(Path::new("/tmp/pmem-vmm-run-1-0"));
        assert_eq!(
            args,
            [
                "-monitor",
                "unix:/tmp/pmem-vmm-run-1-0/qemu-monitor.sock,server=on,wait=off"
            ]
        );
        assert!(monitor_args(&Path::new("/tmp").join("d".repeat(100))).is_empty());
    }

    #[test]
    fn escapes_and_returns_are_stripped() {
        assert_eq!(
            strip_escapes("i /b 0x3f9\r\n\u{1b}[Kportb[0x03f9] = 0x0f\r\n(qemu) "),
            "i /b 0x3f9\nportb[0x03f9] = 0x0f\n(qemu) "
        );
    }
}
