//! Pure parsing of console text: the `@@NAME value@@` markers printed by the host wrapper, the
//! vmm script and the guest init, plus `/proc/iomem`.
//!
//! Markers are searched anywhere in a line, not only at its start, because on a serial console a
//! kernel message or a script's unterminated `printf` can share the line with them.

/// Marker printed by the host wrapper right before the test script starts.
pub const HOST_BEGIN: &str = "@@HOST-BEGIN@@";
/// Name of the marker printed by the host wrapper with the script's exit status.
pub const HOST_END: &str = "HOST-END";

/// Removes carriage returns (serial consoles send CRLF) and other control bytes except newline
/// and tab, so tests can compare lines.
pub fn normalize_console(raw: &str) -> String {
    raw.chars()
        .filter(|&c| c == '\n' || c == '\t' || !c.is_control())
        .collect()
}

/// Whether a console line is a kernel report that a CPU stopped making progress: an RCU stall
/// (the nested-timer symptom in `tests/README.md`), its "timer wakeup didn't happen" companion,
/// or a soft/hard lockup. A guest (or L1) that prints one is not coming back within any test's
/// budget, so the run is stopped at once.
pub fn is_stall_report(line: &str) -> bool {
    (line.contains("rcu: INFO:") && line.contains("stall"))
        || line.contains("rcu_preempt detected stalls")
        || line.contains("rcu_sched detected stalls")
        || line.contains("timer wakeup didn't happen")
        || line.contains("watchdog: BUG: soft lockup")
        || line.contains("Watchdog detected hard LOCKUP")
}

/// The first line of `console` that reports a guest (or L1) kernel crash: an oops, a panic, or
/// the monitor's triple-fault report. A triple fault counts only when no kernel on the console
/// asked for a reset (`reboot: Restarting system`): `reboot=t` makes Linux reboot by triple
/// fault on purpose, and `boot.rs` tests exactly that.
///
/// Under QEMU TCG's nested SVM such crashes happen at random (`tests/README.md`, "The nested
/// guest crash"), so the testbed names them in nested runs and `scripts/check-retries.py`
/// forgives a first try that had one.
pub fn guest_crash_line(console: &str) -> Option<&str> {
    const CRASH: [&str; 5] = [
        "Oops: ",
        "BUG: kernel NULL pointer dereference",
        "BUG: unable to handle page fault",
        "general protection fault",
        "Kernel panic - not syncing",
    ];
    let deliberate_reset = console.contains("reboot: Restarting system");
    console.lines().map(str::trim).find(|line| {
        CRASH.iter().any(|c| line.contains(c))
            || (!deliberate_reset && line.contains(": triple fault: rip "))
    })
}

/// The start of the monitor's warning for a guest that stopped with console output it never
/// sent (vmm `irq_report`): the guest enabled COM1's transmit interrupt, the UART raised it, and
/// the guest never took it.
pub const CONSOLE_STALL: &str = "COM1: the guest stopped with console output it never sent";

/// The warning's verdict for a vector the vCPU accepted and never completed.
pub const VERDICT_IN_SERVICE: &str = " in service, never completed";
/// The warning's verdict for a vector requested at the vCPU and not accepted.
pub const VERDICT_REQUESTED: &str = " requested, not accepted";
/// The warning's words around the last edge's age in ms (`the last N ms before the stop`).
const LAST_EDGE: (&str, &str) = ("the last ", " ms before the stop");

/// How long a requested interrupt must have waited before the stop for
/// [`lost_interrupt_line`] to call it lost: a guest that powers off right after printing
/// leaves a just-raised one requested, which says nothing.
pub const LOST_AFTER_MS: u64 = 2000;

/// The first monitor warning on `console` ([`CONSOLE_STALL`]) that shows the guest's COM1
/// interrupt lost between KVM and the guest's CPU: accepted by the local APIC and never
/// completed (the guest's handler never ran, yet the guest went on to power off), or requested
/// for at least [`LOST_AFTER_MS`] while the guest kept running without accepting it. A monitor
/// only raises the line; what its local APIC shows after that is the CPU's delivery, which
/// under QEMU TCG's nested SVM loses interrupts (`tests/README.md`, "Console output that never
/// came"). A stall whose interrupt never reached any local APIC is not such a line.
pub fn lost_interrupt_line(console: &str) -> Option<&str> {
    console.lines().map(str::trim).find(|line| {
        let Some(at) = line.find(CONSOLE_STALL) else {
            return false;
        };
        let report = &line[at..];
        let waited_ms = report
            .split_once(LAST_EDGE.0)
            .and_then(|(_, rest)| rest.split_once(LAST_EDGE.1))
            .and_then(|(ms, _)| ms.parse::<u64>().ok());
        report.contains(VERDICT_IN_SERVICE)
            || (report.contains(VERDICT_REQUESTED)
                && waited_ms.is_some_and(|ms| ms >= LOST_AFTER_MS))
    })
}

/// The last `n` lines of `text`, for error messages.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut tail = lines[start..].join("\n");
    if tail.is_empty() {
        tail.push_str("(no console output)");
    }
    tail
}

/// `text` with every data block a host script printed between `@@NAME-BEGIN@@` and
/// `@@NAME-END@@` lines (a `--report` JSON, say) folded into one line: what an error's console
/// tail should show is the guest and the vmm, which such a block printed after them would push
/// out of the tail.
pub fn fold_data_blocks(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside: Option<(String, usize)> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some((end, n)) = &mut inside {
            if t == end {
                out.push_str(&format!(
                    "[{n} lines between {} left out]\n",
                    end.replace("-END", "-BEGIN/END")
                ));
                inside = None;
            } else {
                *n += 1;
            }
            continue;
        }
        if let Some(name) = t
            .strip_prefix("@@")
            .and_then(|r| r.strip_suffix("-BEGIN@@"))
            .filter(|n| !n.is_empty() && !n.contains(' '))
        {
            inside = Some((format!("@@{name}-END@@"), 0));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some((end, n)) = inside {
        out.push_str(&format!(
            "[{n} lines after an unclosed block (no {end}) left out]\n"
        ));
    }
    out
}

/// All values of marker `name` in `text`, in order: `@@NAME@@` yields `""`, `@@NAME value@@`
/// yields `"value"`.
pub fn marker_values<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("@@{name}");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find(&open) {
        let after = &rest[pos + open.len()..];
        if let Some(body) = after.strip_prefix("@@") {
            out.push("");
            rest = body;
            continue;
        }
        if let Some(value) = after.strip_prefix(' ') {
            let line = value.split('\n').next().unwrap_or("");
            if let Some(end) = line.find("@@") {
                out.push(value[..end].trim());
                rest = &value[end + 2..];
                continue;
            }
        }
        rest = after;
    }
    out
}

/// The last value of marker `name`, parsed.
pub fn last_marker<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    marker_values(text, name)
        .into_iter()
        .rev()
        .find_map(|v| v.parse().ok())
}

/// The value of the first whitespace-separated `key=value` word in `text` (a marker's value
/// such as `start=0x100 pfns=512`), if any.
pub fn word_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Whether `text` contains marker `name` at all (with or without a value).
pub fn has_marker(text: &str, name: &str) -> bool {
    !marker_values(text, name).is_empty()
}

/// The part of a host console that belongs to the test script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSection<'a> {
    /// The host never printed [`HOST_BEGIN`]: L1 did not boot or its init failed.
    NoBegin,
    /// The script started but the host stopped before printing its exit status.
    NoEnd {
        /// Everything after the begin marker.
        output: &'a str,
    },
    /// The script ran to completion.
    Done {
        /// Everything between the markers.
        output: &'a str,
        /// The script's exit status.
        rc: i32,
    },
}

/// Splits a host console into the script's section (see [`HostSection`]).
pub fn host_section(console: &str) -> HostSection<'_> {
    let Some(begin) = console.find(HOST_BEGIN) else {
        return HostSection::NoBegin;
    };
    let after = &console[begin + HOST_BEGIN.len()..];
    let body = after.strip_prefix('\n').unwrap_or(after);
    let open = format!("@@{HOST_END} ");
    let mut search_end = body.len();
    while let Some(pos) = body[..search_end].rfind(&open) {
        let value = &body[pos + open.len()..];
        let rc = value
            .split_once("@@")
            .filter(|(v, _)| !v.contains('\n'))
            .and_then(|(v, _)| v.trim().parse::<i32>().ok());
        if let Some(rc) = rc {
            return HostSection::Done {
                output: &body[..pos],
                rc,
            };
        }
        search_end = pos;
    }
    HostSection::NoEnd { output: body }
}

/// One line of `/proc/iomem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IomemEntry {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive, as the kernel prints it).
    pub end: u64,
    /// Resource name, e.g. `System RAM`.
    pub name: String,
    /// Nesting depth (two spaces of indentation per level).
    pub depth: usize,
}

/// Parses the `/proc/iomem` lines found in `text`; other lines (kernel messages, markers) are
/// skipped so the whole guest console can be passed in.
pub fn parse_iomem(text: &str) -> Vec<IomemEntry> {
    text.lines()
        .filter_map(|line| {
            let trimmed = line.trim_start_matches(' ');
            let depth = (line.len() - trimmed.len()) / 2;
            let (range, name) = trimmed.split_once(" : ")?;
            let (start, end) = range.split_once('-')?;
            if start.is_empty() || !start.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            Some(IomemEntry {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end.trim(), 16).ok()?,
                name: name.trim().to_string(),
                depth,
            })
        })
        .collect()
}

/// `System RAM` entries of `iomem` that overlap the inclusive range `[lo, hi]`.
pub fn system_ram_overlapping(iomem: &[IomemEntry], lo: u64, hi: u64) -> Vec<IomemEntry> {
    iomem
        .iter()
        .filter(|e| e.name == "System RAM" && e.start <= hi && e.end >= lo)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{guest_crash_line, word_value};

    #[test]
    fn key_value_words() {
        let s = "start=0x100 size=0x200 pfns=512 pfns=7";
        assert_eq!(word_value(s, "size"), Some("0x200"));
        assert_eq!(word_value(s, "pfns"), Some("512"));
        assert_eq!(word_value(s, "pfn"), None);
        assert_eq!(word_value(s, "tart"), None);
        assert_eq!(word_value("empty=", "empty"), Some(""));
    }

    #[test]
    fn guest_crashes_are_found_and_deliberate_resets_are_not() {
        let oops = "[    4.43] BUG: kernel NULL pointer dereference, address: 0000000000000378\n\
                    [    4.43] Oops: Oops: 0000 [#1] SMP\n";
        assert_eq!(
            guest_crash_line(oops),
            Some("[    4.43] BUG: kernel NULL pointer dereference, address: 0000000000000378")
        );
        let triple =
            "[    15.05] AppArmor: AppArmor sha1 policy hash[2026-12-02T15:37:35.620Z WARN  \
                      vmm::vcpu] vCPU 0: triple fault: rip 0xfff0 rsp 0x0\n";
        assert!(guest_crash_line(triple).unwrap().contains("triple fault"));
        let deliberate = "[    3.1] reboot: Restarting system\n[..WARN vmm::vcpu] vCPU 0: triple \
                          fault: rip 0xfff0 rsp 0x0\n";
        assert_eq!(guest_crash_line(deliberate), None);
        assert!(guest_crash_line("[ 1.0] Kernel panic - not syncing: Fatal exception\n").is_some());
        assert_eq!(guest_crash_line("@@GUEST-INIT@@\nall fine\n"), None);
    }

    #[test]
    fn data_blocks_fold_into_one_line() {
        let text = "guest line\n@@VMM-REPORT-BEGIN@@\n{\n\"a\": 1\n}\n@@VMM-REPORT-END@@\nlast\n";
        assert_eq!(
            super::fold_data_blocks(text),
            "guest line\n[3 lines between @@VMM-REPORT-BEGIN/END@@ left out]\nlast\n"
        );
        // Markers with a value are not blocks; an unclosed block is said to be one.
        let text = "@@GUEST-EXIT 0@@\n@@X-BEGIN@@\n1\n";
        assert_eq!(
            super::fold_data_blocks(text),
            "@@GUEST-EXIT 0@@\n[1 lines after an unclosed block (no @@X-END@@) left out]\n"
        );
    }

    use super::*;

    #[test]
    fn normalize_strips_cr_and_controls() {
        assert_eq!(normalize_console("a\r\nb\x1b[0m\tc\r\n"), "a\nb[0m\tc\n");
    }

    #[test]
    fn stall_reports() {
        for line in [
            "[  95.1] rcu: INFO: rcu_sched self-detected stall on CPU",
            "rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
            "[ 1.0] rcu: rcu_sched kthread timer wakeup didn't happen for 6333 jiffies! g-1191",
            "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]",
        ] {
            assert!(is_stall_report(line), "{line}");
        }
        for line in [
            "@@GUEST-INIT@@",
            "rcu: Hierarchical RCU implementation.",
            "stall detection disabled",
        ] {
            assert!(!is_stall_report(line), "{line}");
        }
    }

    #[test]
    fn tail() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "(no console output)");
    }

    #[test]
    fn marker_values_anywhere_in_line() {
        let text = "@@GUEST-INIT@@\nnoise @@GUEST-CPUS 4@@ more\n[ 1.0] x@@GUEST-EXIT 3@@\n\
                    @@GUEST-MEMTOTAL-KB 262144@@\n@@GUEST-EXIT 7@@";
        assert_eq!(marker_values(text, "GUEST-INIT"), vec![""]);
        assert_eq!(marker_values(text, "GUEST-CPUS"), vec!["4"]);
        assert_eq!(marker_values(text, "GUEST-EXIT"), vec!["3", "7"]);
        assert_eq!(last_marker::<i32>(text, "GUEST-EXIT"), Some(7));
        assert_eq!(last_marker::<u64>(text, "GUEST-MEMTOTAL-KB"), Some(262144));
        assert!(has_marker(text, "GUEST-INIT"));
        assert!(!has_marker(text, "GUEST"));
        assert!(!has_marker(text, "VMM-EXIT"));
    }

    #[test]
    fn marker_value_does_not_span_lines() {
        assert!(marker_values("@@GUEST-EXIT 1\n@@", "GUEST-EXIT").is_empty());
        // A broken marker does not hide a later good one.
        assert_eq!(
            marker_values("@@GUEST-EXIT 1\n@@GUEST-EXIT 2@@", "GUEST-EXIT"),
            vec!["2"]
        );
    }

    #[test]
    fn host_section_done() {
        let c = "SeaBIOS\nboot\n@@HOST-BEGIN@@\nhello\nworld\n@@HOST-END 3@@\npower off\n";
        assert_eq!(
            host_section(c),
            HostSection::Done {
                output: "hello\nworld\n",
                rc: 3
            }
        );
    }

    #[test]
    fn host_section_unterminated_output_line() {
        let c = "@@HOST-BEGIN@@\nabc@@HOST-END 0@@\n";
        assert_eq!(
            host_section(c),
            HostSection::Done {
                output: "abc",
                rc: 0
            }
        );
    }

    #[test]
    fn host_section_uses_last_end_marker() {
        let c = "@@HOST-BEGIN@@\necho @@HOST-END 5@@\n@@HOST-END 0@@\n";
        assert_eq!(
            host_section(c),
            HostSection::Done {
                output: "echo @@HOST-END 5@@\n",
                rc: 0
            }
        );
    }

    #[test]
    fn host_section_missing_markers() {
        assert_eq!(host_section("Kernel panic"), HostSection::NoBegin);
        assert_eq!(
            host_section("@@HOST-BEGIN@@\nstarted\n@@HOST-END x@@"),
            HostSection::NoEnd {
                output: "started\n@@HOST-END x@@"
            }
        );
    }

    #[test]
    fn iomem() {
        let text = "@@GUEST-INIT@@\n00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n\
                    00100000-bfffffff : System RAM\n  01000000-01ffffff : Kernel code\n\
                    c0000000-febfffff : PCI Bus 0000:00\n100000000-13fffffff : System RAM\n\
                    garbage : line\n";
        let e = parse_iomem(text);
        assert_eq!(e.len(), 6);
        assert_eq!(
            e[3],
            IomemEntry {
                start: 0x0100_0000,
                end: 0x01ff_ffff,
                name: "Kernel code".into(),
                depth: 1
            }
        );
        assert!(system_ram_overlapping(&e, 0xC000_0000, 0xFFFF_FFFF).is_empty());
        let bad = parse_iomem("00100000-c0000fff : System RAM\n");
        assert_eq!(
            system_ram_overlapping(&bad, 0xC000_0000, 0xFFFF_FFFF).len(),
            1
        );
    }

    /// The vmm writes the warning this module parses (`vmm/src/irq_report.rs`, which the
    /// testbed does not link): its wording must be these words.
    #[test]
    fn the_vmm_writes_the_words_lost_interrupt_line_reads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../vmm/src/irq_report.rs");
        let source = std::fs::read_to_string(path).unwrap();
        for words in [
            CONSOLE_STALL,
            VERDICT_IN_SERVICE.trim(),
            VERDICT_REQUESTED.trim(),
            LAST_EDGE.0,
            LAST_EDGE.1,
        ] {
            assert!(source.contains(words), "{words:?}");
        }
    }

    #[test]
    fn lost_interrupts_are_named_and_other_stalls_are_not() {
        let stall = |verdict: &str, ms: u64| {
            format!(
                "[2026-12-03T16:35:29.809Z WARN  vmm] {CONSOLE_STALL}: it enabled the transmit \
                 interrupt, the UART raised it and it was never taken (9 interrupt edges since \
                 start, the last {ms} ms before the stop); I/O APIC pin 4: vector 0x22, edge, \
                 unmasked; vCPU 0: vector 0x22 {verdict} (IRR [0x22], ISR [], TPR 0x00, PPR 0x00)"
            )
        };
        let in_service = stall("in service, never completed", 10);
        let old = stall("requested, not accepted", 5400);
        let fresh = stall("requested, not accepted", 3);
        let never = stall("not requested", 5400);
        let console = format!("@@G1@@ boot\n@@G1@@ {in_service}\nreboot\n");
        assert_eq!(
            lost_interrupt_line(&console),
            Some(format!("@@G1@@ {in_service}").as_str())
        );
        assert!(lost_interrupt_line(&old).is_some());
        assert_eq!(lost_interrupt_line(&fresh), None, "just raised at the stop");
        assert_eq!(
            lost_interrupt_line(&never),
            None,
            "lost before any local APIC"
        );
        assert_eq!(lost_interrupt_line("@@GUEST-INIT@@\nall fine\n"), None);
    }
}
