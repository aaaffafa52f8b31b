//! `bench-probe`: the measuring half of `bench`, run on the KVM host (L1 in nested mode) and in
//! the guest. Every result is a `@@BENCH tag metric value@@` line on stdout (see
//! `bench::lines`); a measurement that fails prints `@@BENCH-FAIL tag reason@@` and exits 1.
//!
//! ```text
//! bench-probe launch --tag T --until TEXT [--until-name METRIC] [--at METRIC=TEXT]...
//!                    [--rss --ram-bytes N [--exclude PATH]... [--settle-ms MS]]
//!                    [--idle-thread NAME [--idle-s S]] [--api-socket PATH]
//!                    [--collect-until TEXT]
//!                    [--timeout-s S] -- PROGRAM ARGS...
//!     Starts PROGRAM (stdin /dev/null) and timestamps each line of its stdout and stderr with
//!     CLOCK_MONOTONIC. METRIC_ms = time from just before the exec to the first line holding
//!     TEXT. Stops at the first line holding the --until text (a "@@GUEST-EXIT rc@@" there must
//!     have rc 0); with --rss then waits --settle-ms and reads /proc/PID/smaps: rss_kib (all but
//!     guest RAM and pmem mappings) and rss_total_kib. Then kills PROGRAM. Bench lines PROGRAM
//!     prints are passed on (a two-field "@@BENCH metric value@@" gets tag T). With
//!     --idle-thread NAME [--idle-s S] it then counts, over S seconds (default 5), the context
//!     switches and CPU time of PROGRAM's threads named NAME: idle_wakeups, idle_cpu_ms.
//!     With --api-socket PATH (our vmm's), each "@@STAGE2 CASE@@" line PROGRAM prints reads
//!     `vm.counters` there; the stage-2 figures of each CASE (what KVM's counts gained since the
//!     previous such line, `bench::stage2`) are tagged PHASE.CASE.RUN of T. With
//!     --collect-until TEXT it goes on reading PROGRAM's lines after the --until line (passing
//!     bench lines on, and "@@DMESG-GAP text@@" lines as dmesg_gap info lines) until one
//!     holds TEXT (at most 60 s), before the memory is read.
//! bench-probe density --tag T --count N --until TEXT --ready TEXT --ram-bytes B
//!                     --image PREFIX... [--settle-ms MS] [--timeout-s S] -- PROGRAM ARGS...
//!     Starts N copies of PROGRAM at once ("{i}" in an argument becomes the copy's index, 0 to
//!     N-1), each in its own process group, and waits until every one has printed the --until
//!     line (all_init_ms: exec to the last of them) and then the --ready line. After --settle-ms
//!     it reads, per copy, /proc/PID/smaps (monitor_rss_kib, monitor_pss_kib: the sums over the
//!     copies of everything but guest RAM and the image mappings; guest_ram_kib), and the
//!     pagemap of each mapping whose path starts with an --image prefix (image_mapped_kib,
//!     image_distinct_kib, image_pfn_shared_kib, image_pfn_mismatch_kib: `bench::density`),
//!     the page cache of those files (image_cache_kib, by mincore(2), each file once) and the
//!     fall of MemFree since before the launch (host_mem_kib; the baseline is taken once MemFree
//!     holds still, at most 10 s), and that plus the image's page
//!     cache (host_total_kib, host_total_per_guest_kib). Then kills them all. Every guest must
//!     print "@@DENSITY-ROOT <its /proc/mounts line for />@@" with dax=always in it (the first
//!     becomes a root_mount info line), or the case fails.
//! bench-probe bw --tag T --path P [--offset O] [--create] --bytes N --chunk C [--passes K]
//!     mmap()s N bytes of P (MAP_SHARED) and copies them in chunks of C to and from an anonymous
//!     buffer: one untimed write+read pass, then K timed read passes and K timed write passes.
//!     read_mib_s, write_mib_s.
//! bench-probe write-time FILE VALUE
//!     Writes VALUE to FILE (a sysfs attribute) in one write(2); prints the microseconds it took.
//! bench-probe report --tag T FILE
//!     The first device of a `vmm --report` JSON file: formula_* samples and info lines.
//! bench-probe host-info --tag T
//!     Kernel, CPU, address width, memory, clock source of this machine as info lines.
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bench::lines::{fail_line, info_line, retag, sample_line};
use bench::smaps::monitor_rss;

const TAIL: usize = 25;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: bench-probe launch|bw|write-time|report|host-info ... (see the source)");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "launch" => launch(rest),
        "bw" => bandwidth(rest),
        "density" => density(rest),
        "write-time" => write_time(rest),
        "report" => report(rest),
        "host-info" => host_info(rest),
        other => Err(Failure::usage(format!("unknown command {other:?}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(tag) = &f.tag {
                println!("{}", fail_line(tag, &f.reason));
            } else {
                eprintln!("bench-probe: {}", f.reason);
            }
            for line in &f.tail {
                println!("bench-probe| {line}");
            }
            ExitCode::from(if f.tag.is_some() { 1 } else { 2 })
        }
    }
}

/// Why a command failed: with a tag it becomes a `@@BENCH-FAIL@@` line.
struct Failure {
    tag: Option<String>,
    reason: String,
    tail: Vec<String>,
}

impl Failure {
    fn usage(reason: impl Into<String>) -> Failure {
        Failure {
            tag: None,
            reason: reason.into(),
            tail: Vec::new(),
        }
    }
    fn tagged(tag: &str, reason: impl Into<String>) -> Failure {
        Failure {
            tag: Some(tag.to_string()),
            reason: reason.into(),
            tail: Vec::new(),
        }
    }
}

/// `--name value` options before an optional `--`, and flags.
struct Opts {
    pairs: Vec<(String, String)>,
    flags: Vec<String>,
    rest: Vec<String>,
}

impl Opts {
    fn parse(args: &[String], flags: &[&str]) -> Result<Opts, Failure> {
        let mut o = Opts {
            pairs: Vec::new(),
            flags: Vec::new(),
            rest: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--" {
                o.rest = it.cloned().collect();
                break;
            }
            let Some(name) = a.strip_prefix("--") else {
                o.rest.push(a.clone());
                continue;
            };
            if flags.contains(&name) {
                o.flags.push(name.to_string());
                continue;
            }
            let value = it
                .next()
                .ok_or_else(|| Failure::usage(format!("--{name} needs a value")))?;
            o.pairs.push((name.to_string(), value.clone()));
        }
        Ok(o)
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
    fn need(&self, name: &str) -> Result<&str, Failure> {
        self.get(name)
            .ok_or_else(|| Failure::usage(format!("--{name} is required")))
    }
    fn num(&self, name: &str, default: u64) -> Result<u64, Failure> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Failure::usage(format!("--{name} {v}: not a number"))),
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

// ---------------------------------------------------------------------------------------------
// launch
// ---------------------------------------------------------------------------------------------

fn launch(args: &[String]) -> Result<(), Failure> {
    let o = Opts::parse(args, &["rss"])?;
    let tag = o.need("tag")?.to_string();
    let until = o.need("until")?.to_string();
    let until_name = o.get("until-name").unwrap_or("launch_ms").to_string();
    let timeout = Duration::from_secs(o.num("timeout-s", 300)?);
    let settle = Duration::from_millis(o.num("settle-ms", 500)?);
    let ram_bytes = o.num("ram-bytes", 0)?;
    let excludes = o.all("exclude");
    let mut ats: Vec<(String, String, Option<Duration>)> = Vec::new();
    for a in o.all("at") {
        let (m, sub) = a
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--at {a}: expected METRIC=TEXT")))?;
        ats.push((m.to_string(), sub.to_string(), None));
    }
    let Some((program, program_args)) = o.rest.split_first() else {
        return Err(Failure::usage("launch needs -- PROGRAM ARGS"));
    };

    let mut cmd = Command::new(program);
    cmd.args(program_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::tagged(&tag, format!("cannot start {program}: {e}")))?;
    let pid = child.id() as i32;
    let kill_group = || {
        // SAFETY: kill(2) has no memory-safety preconditions; -pid is the group we created.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    };

    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    spawn_reader(out, tx.clone());
    spawn_reader(err, tx);

    let api_socket = o.get("api-socket").map(std::path::PathBuf::from);
    let mut stage2: Vec<(String, bench::stage2::Pages)> = Vec::new();
    let mut stage2_failures: Vec<String> = Vec::new();
    let mut tail: VecDeque<String> = VecDeque::new();
    let deadline = started + timeout;
    let mut until_at: Option<Duration> = None;
    let mut problem: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((when, line)) => {
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                let t = when.duration_since(started);
                for (_, sub, seen) in ats.iter_mut() {
                    if seen.is_none() && line.contains(sub.as_str()) {
                        *seen = Some(t);
                    }
                }
                if let Some(l) = retag(&line, &tag) {
                    println!("{l}");
                }
                if let (Some(socket), Some(case)) = (&api_socket, bench::stage2::marker_case(&line))
                {
                    match bench::stage2::query(socket)
                        .and_then(|c| bench::stage2::Pages::from_counters(&c))
                    {
                        Ok(p) => {
                            println!(
                                "{}",
                                info_line(&tag, &format!("stage2_{case}"), &format!("{p:?}"))
                            );
                            stage2.push((case.to_string(), p));
                        }
                        Err(e) => stage2_failures.push(format!("{case}: {e}")),
                    }
                }
                if line.contains(until.as_str()) {
                    until_at = Some(t);
                    if let Some(rc) = guest_exit(&line) {
                        if rc != 0 {
                            problem = Some(format!("the guest command exited {rc}"));
                        }
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                problem = Some(format!("no {until:?} within {} s", timeout.as_secs()));
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                problem = Some(format!("{program} ended ({status}) before {until:?}"));
                break;
            }
        }
    }
    let finish = |problem: String, tail: &VecDeque<String>| {
        kill_group();
        Failure {
            tag: Some(tag.clone()),
            reason: problem,
            tail: tail.iter().cloned().collect(),
        }
    };
    if let Some(p) = problem {
        let f = finish(p, &tail);
        let _ = child.wait();
        return Err(f);
    }
    let until_at = until_at.expect("set when no problem");
    let mut lines = Vec::new();
    if let Some(text) = o.get("collect-until") {
        let limit = Instant::now() + Duration::from_secs(60);
        let mut found = false;
        while let Ok((_, line)) = rx.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(l) = retag(line, &tag) {
                println!("{l}");
            }
            // boot.sh's largest gaps between kernel messages: facts for the JSON's infos.
            if let Some(gap) = line
                .split_once("@@DMESG-GAP ")
                .and_then(|(_, rest)| rest.split("@@").next())
            {
                println!("{}", info_line(&tag, "dmesg_gap", gap));
            }
            if line.contains(text) {
                found = true;
                break;
            }
        }
        if !found {
            lines.push(info_line(
                &tag,
                "missing",
                &format!("no line with {text:?} within 60 s of {until:?}"),
            ));
        }
    }
    if api_socket.is_some() {
        let t = bench::lines::Tag::parse(&tag);
        lines.extend(bench::stage2::gained(&t.phase, t.run, &stage2));
        for f in &stage2_failures {
            lines.push(fail_line(&format!("{}.stage2.{}", t.phase, t.run), f));
        }
    }
    if !until_name.is_empty() {
        lines.push(sample_line(&tag, &until_name, ms(until_at)));
    }
    for (metric, sub, seen) in &ats {
        match seen {
            Some(t) => lines.push(sample_line(&tag, metric, ms(*t))),
            None => lines.push(info_line(
                &tag,
                "missing",
                &format!("{metric}: no line with {sub:?} before {until:?}"),
            )),
        }
    }
    if o.flag("rss") {
        std::thread::sleep(settle);
        if let Ok(Some(status)) = child.try_wait() {
            let f = finish(
                format!("{program} ended ({status}) before its memory was read"),
                &tail,
            );
            return Err(f);
        }
        match std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
            Ok(text) => {
                let (total, own) = monitor_rss(&text, ram_bytes, &excludes);
                lines.push(sample_line(&tag, "rss_kib", own as f64));
                lines.push(sample_line(&tag, "rss_total_kib", total as f64));
            }
            Err(e) => {
                let f = finish(format!("reading /proc/{pid}/smaps: {e}"), &tail);
                let _ = child.wait();
                return Err(f);
            }
        }
    }
    if let Some(name) = o.get("idle-thread") {
        let before = thread_activity(pid, name);
        std::thread::sleep(Duration::from_secs(o.num("idle-s", 5)?));
        let after = thread_activity(pid, name);
        match (before, after) {
            (Some((w0, c0)), Some((w1, c1))) if child.try_wait().ok().flatten().is_none() => {
                lines.push(sample_line(
                    &tag,
                    "idle_wakeups",
                    w1.saturating_sub(w0) as f64,
                ));
                lines.push(sample_line(
                    &tag,
                    "idle_cpu_ms",
                    (c1 - c0).max(0.0) * 1000.0,
                ));
            }
            _ => {
                let f = finish(
                    format!("no live thread named {name:?} in {program} to watch"),
                    &tail,
                );
                let _ = child.wait();
                return Err(f);
            }
        }
    }
    kill_group();
    let _ = child.wait();
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// Context switches (voluntary and not) and CPU seconds of `pid`'s threads named `name`, or
/// `None` when it has none.
fn thread_activity(pid: i32, name: &str) -> Option<(u64, f64)> {
    // SAFETY: sysconf(3) has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut found = None;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let switches: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks;
        let (w, c) = found.unwrap_or((0, 0.0));
        found = Some((w + switches, c + cpu));
    }
    found
}

/// The status in a `@@GUEST-EXIT rc@@` line.
fn guest_exit(line: &str) -> Option<i32> {
    let rest = &line[line.find("@@GUEST-EXIT ")? + "@@GUEST-EXIT ".len()..];
    rest.split("@@").next()?.trim().parse().ok()
}

fn spawn_reader(pipe: impl Read + Send + 'static, tx: mpsc::Sender<(Instant, String)>) {
    spawn_lines(pipe, move |now, line| match line {
        Some(line) => tx.send((now, line)).is_ok(),
        None => true,
    });
}

/// Reads `pipe` line by line on a thread of its own and hands each line, then `None` at its
/// end, to `deliver`; stops early when `deliver` says the receiver is gone (returns false).
fn spawn_lines(
    pipe: impl Read + Send + 'static,
    mut deliver: impl FnMut(Instant, Option<String>) -> bool + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if !deliver(Instant::now(), Some(line)) {
                        return;
                    }
                }
            }
        }
        deliver(Instant::now(), None);
    });
}

// ---------------------------------------------------------------------------------------------
// density
// ---------------------------------------------------------------------------------------------

/// `MemFree` of /proc/meminfo, KiB.
fn mem_free_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with("MemFree:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A monitor's present image pages and its image mappings.
type ImagePages = (
    Vec<(bench::density::PageKey, u64)>,
    Vec<bench::density::FileMapping>,
);

/// The present pages of `pid`'s image mappings, keyed by file and page.
fn image_pages(pid: i32, prefixes: &[String]) -> Result<ImagePages, String> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("reading /proc/{pid}/maps: {e}"))?;
    let mappings = bench::density::image_mappings(&maps, prefixes);
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))
        .map_err(|e| format!("opening /proc/{pid}/pagemap: {e}"))?;
    let page = bench::density::PAGE;
    let mut out = Vec::new();
    for m in &mappings {
        let pages = ((m.end - m.start) / page) as usize;
        let mut raw = vec![0u8; pages * 8];
        pagemap
            .read_exact_at(&mut raw, m.start / page * 8)
            .map_err(|e| format!("reading /proc/{pid}/pagemap at {:#x}: {e}", m.start))?;
        for (k, entry) in raw.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
            if let Some(pfn) = bench::density::present_pfn(entry) {
                if pfn == 0 {
                    return Err("pagemap gives frame 0: not root (CAP_SYS_ADMIN)?".into());
                }
                out.push(((m.dev.clone(), m.inode, m.offset / page + k as u64), pfn));
            }
        }
    }
    Ok((out, mappings))
}

/// Pages of `path` in the page cache (mincore(2) over a fresh read-only mapping).
fn cached_pages(path: &str) -> Result<u64, String> {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len() as usize;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: a fresh read-only shared mapping of an open file; checked, never dereferenced,
    // unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!(
            "mmap of {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let map = Map {
        ptr: ptr.cast(),
        len,
    };
    let pages = len.div_ceil(bench::density::PAGE as usize);
    let mut vec = vec![0u8; pages];
    // SAFETY: the range is exactly the mapping above; `vec` holds one byte per page.
    let rc = unsafe { libc::mincore(map.ptr.cast(), len, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(format!(
            "mincore of {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(vec.iter().filter(|b| **b & 1 == 1).count() as u64)
}

/// The monitors one density case runs at once, each the leader of its own process group:
/// dropping this kills every group and reaps every monitor, on every path out of the case.
struct Copies(Vec<std::process::Child>);

impl Drop for Copies {
    fn drop(&mut self) {
        for c in &self.0 {
            // SAFETY: kill(2) has no memory-safety preconditions; -pid names the process group
            // this child leads (spawned with process_group(0)) and it is not reaped yet.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn density(args: &[String]) -> Result<(), Failure> {
    let o = Opts::parse(args, &[])?;
    let tag = o.need("tag")?.to_string();
    let count = o.num("count", 1)?.max(1) as usize;
    let until = o.need("until")?.to_string();
    let ready = o.need("ready")?.to_string();
    let ram_bytes = o.num("ram-bytes", 0)?;
    let images = o.all("image");
    let settle = Duration::from_millis(o.num("settle-ms", 500)?);
    let timeout = Duration::from_secs(o.num("timeout-s", 600)?);
    if images.is_empty() {
        return Err(Failure::usage("density needs --image PREFIX"));
    }
    let Some((program, template)) = o.rest.split_first() else {
        return Err(Failure::usage("density needs -- PROGRAM ARGS"));
    };
    // The baseline once the host's free memory holds still (a monitor killed just before, the
    // previous case's, may still be handing its memory back): two readings 300 ms apart within
    // 256 KiB, for at most 10 s.
    let mut free_before = mem_free_kib();
    let quiet_by = Instant::now() + Duration::from_secs(10);
    while Instant::now() < quiet_by {
        std::thread::sleep(Duration::from_millis(300));
        let now = mem_free_kib();
        let still = matches!((free_before, now), (Some(a), Some(b)) if a.abs_diff(b) < 256);
        free_before = now;
        if still {
            break;
        }
    }

    // Every copy's lines come tagged with its index; `None` is the end of one of its pipes.
    let (tx, rx) = mpsc::channel::<(usize, Instant, Option<String>)>();
    let mut children = Copies(Vec::new());
    let started = Instant::now();
    let mut pids: Vec<i32> = Vec::new();
    for i in 0..count {
        let args: Vec<String> = template
            .iter()
            .map(|a| a.replace("{i}", &i.to_string()))
            .collect();
        let mut cmd = Command::new(program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Err(Failure::tagged(
                    &tag,
                    format!("cannot start copy {i} of {program}: {e}"),
                ));
            }
        };
        pids.push(child.id() as i32);
        for pipe in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let tx = tx.clone();
            spawn_lines(pipe, move |now, line| tx.send((i, now, line)).is_ok());
        }
        children.0.push(child);
    }
    drop(tx);

    let mut init_at: Vec<Option<Duration>> = vec![None; count];
    let mut is_ready = vec![false; count];
    let mut eofs = vec![0; count];
    let mut tails: Vec<VecDeque<String>> = vec![VecDeque::new(); count];
    let mut root_mount: Vec<Option<String>> = vec![None; count];
    let deadline = started + timeout;
    let mut problem: Option<(usize, String)> = None;
    while is_ready.iter().any(|r| !r) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, when, Some(line))) => {
                let line = line.trim_end_matches(['\r', '\n']).to_string();
                if tails[i].len() == TAIL {
                    tails[i].pop_front();
                }
                tails[i].push_back(line.clone());
                if init_at[i].is_none() && line.contains(until.as_str()) {
                    init_at[i] = Some(when.duration_since(started));
                }
                if line.contains(ready.as_str()) {
                    is_ready[i] = true;
                }
                if let Some(r) = line
                    .split_once("@@DENSITY-ROOT ")
                    .and_then(|(_, r)| r.split("@@").next())
                {
                    root_mount[i] = Some(r.to_string());
                }
            }
            Ok((i, _, None)) => {
                eofs[i] += 1;
                if eofs[i] == 2 && !is_ready[i] {
                    let status = children.0[i]
                        .wait()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    problem = Some((i, format!("copy {i} of {program} ended ({status})")));
                    break;
                }
            }
            Err(_) => {
                let late = is_ready.iter().position(|r| !r).unwrap_or(0);
                problem = Some((
                    late,
                    format!(
                        "{} of {count} guests not ready ({ready:?}) within {} s",
                        is_ready.iter().filter(|r| !**r).count(),
                        timeout.as_secs()
                    ),
                ));
                break;
            }
        }
    }
    let fail = |i: usize, reason: String, tails: &[VecDeque<String>]| Failure {
        tag: Some(tag.clone()),
        reason,
        tail: tails[i]
            .iter()
            .map(|l| format!("[guest {i}] {l}"))
            .collect(),
    };
    if let Some((i, reason)) = problem {
        return Err(fail(i, reason, &tails));
    }
    if let Some(i) = init_at.iter().position(Option::is_none) {
        return Err(fail(
            i,
            format!("guest {i} was ready without its {until:?} line"),
            &tails,
        ));
    }
    // The use case is a DAX root: a guest whose root is not mounted `dax=always` is a failure.
    if let Some(i) = root_mount
        .iter()
        .position(|r| !r.as_deref().is_some_and(|r| r.contains("dax=always")))
    {
        return Err(fail(
            i,
            format!(
                "guest {i}'s root is not mounted with dax=always: {:?}",
                root_mount[i]
            ),
            &tails,
        ));
    }
    let all_init = init_at.iter().flatten().max().copied().unwrap_or_default();
    std::thread::sleep(settle);

    let mut lines = Vec::new();
    let mut pages = Vec::new();
    let mut files: std::collections::BTreeMap<(String, u64), String> = Default::default();
    let (mut rss, mut pss, mut ram) = (0u64, 0u64, 0u64);
    let free_after = mem_free_kib();
    for (i, pid) in pids.iter().enumerate() {
        if let Ok(Some(status)) = children.0[i].try_wait() {
            return Err(fail(
                i,
                format!("copy {i} of {program} ended ({status}) before it was measured"),
                &tails,
            ));
        }
        let measured = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .map_err(|e| format!("reading /proc/{pid}/smaps: {e}"))
            .and_then(|smaps| {
                let (r, p) = bench::smaps::monitor_rss_pss(&smaps, ram_bytes, &images);
                let g = bench::smaps::guest_ram_rss(&smaps, ram_bytes, &images);
                Ok((r, p, g, image_pages(*pid, &images)?))
            });
        match measured {
            Ok((r, p, g, (list, mappings))) => {
                rss += r;
                pss += p;
                ram += g;
                if mappings.is_empty() {
                    return Err(fail(
                        i,
                        format!("copy {i} of {program} maps no file under {images:?}"),
                        &tails,
                    ));
                }
                for m in mappings {
                    let path = m.path.trim_end_matches(" (deleted)").to_string();
                    files.entry((m.dev, m.inode)).or_insert(path);
                }
                pages.push(list);
            }
            Err(e) => {
                return Err(fail(i, e, &tails));
            }
        }
    }
    let mut cache = 0;
    for path in files.values() {
        match cached_pages(path) {
            Ok(n) => cache += n,
            Err(e) => {
                return Err(fail(0, e, &tails));
            }
        }
    }
    drop(children);
    let share = bench::density::sharing(&pages);
    let kib = |pages: u64| (pages * bench::density::PAGE / 1024) as f64;
    lines.push(sample_line(&tag, "all_init_ms", ms(all_init)));
    lines.push(sample_line(&tag, "monitor_rss_kib", rss as f64));
    lines.push(sample_line(&tag, "monitor_pss_kib", pss as f64));
    lines.push(sample_line(
        &tag,
        "monitor_rss_per_guest_kib",
        (rss as f64 / count as f64).round(),
    ));
    lines.push(sample_line(&tag, "guest_ram_kib", ram as f64));
    lines.push(sample_line(&tag, "image_cache_kib", kib(cache)));
    lines.push(sample_line(&tag, "image_mapped_kib", kib(share.mapped)));
    lines.push(sample_line(&tag, "image_distinct_kib", kib(share.distinct)));
    lines.push(sample_line(&tag, "image_pfn_shared_kib", kib(share.shared)));
    lines.push(sample_line(
        &tag,
        "image_pfn_mismatch_kib",
        kib(share.mismatch),
    ));
    lines.push(sample_line(&tag, "image_files", share.files as f64));
    if let (Some(before), Some(after)) = (free_before, free_after) {
        // The guests, monitors and their kernel state; the image files were there before.
        let used = before as f64 - after as f64;
        lines.push(sample_line(&tag, "host_mem_kib", used));
        let total = used + kib(cache);
        lines.push(sample_line(&tag, "host_total_kib", total));
        lines.push(sample_line(
            &tag,
            "host_total_per_guest_kib",
            (total / count as f64).round(),
        ));
    }
    if let Some(r) = &root_mount[0] {
        lines.push(info_line(&tag, "root_mount", r));
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// bw
// ---------------------------------------------------------------------------------------------

struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing borrows the mapping any more.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

fn bandwidth(args: &[String]) -> Result<(), Failure> {
    use std::os::unix::io::AsRawFd;
    let o = Opts::parse(args, &["create"])?;
    let tag = o.need("tag")?.to_string();
    let path = o.need("path")?.to_string();
    let offset = o.num("offset", 0)?;
    let bytes = o.num("bytes", 256 << 20)? as usize;
    let chunk = (o.num("chunk", 64 << 20)? as usize).min(bytes).max(4096);
    let passes = o.num("passes", 3)?.max(1) as usize;
    let fail = |what: String| Failure::tagged(&tag, what);

    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(o.flag("create"))
        .truncate(false)
        .open(&path)
        .map_err(|e| fail(format!("opening {path}: {e}")))?;
    if o.flag("create") {
        let want = offset + bytes as u64;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < want {
            file.set_len(want)
                .map_err(|e| fail(format!("sizing {path}: {e}")))?;
        }
    }
    // SAFETY: a fresh shared mapping of an open file descriptor; the result is checked, and the
    // memory is only touched through the Map below while it lives.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(fail(format!(
            "mmap of {bytes} bytes of {path} at {offset}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let map = Map {
        ptr: ptr.cast(),
        len: bytes,
    };
    let mut buf = vec![0x5au8; chunk];
    let chunks = bytes / chunk;
    let read_pass = |buf: &mut Vec<u8>| {
        for c in 0..chunks {
            // SAFETY: the copy stays inside the mapping (c < chunks, chunks * chunk <= bytes) and
            // the buffer (chunk bytes); the two never overlap (one is the file mapping, one the
            // heap).
            unsafe {
                std::ptr::copy_nonoverlapping(map.ptr.add(c * chunk), buf.as_mut_ptr(), chunk);
            }
            std::hint::black_box(&mut *buf);
        }
    };
    let write_pass = |buf: &Vec<u8>| {
        for c in 0..chunks {
            // SAFETY: as in `read_pass`: inside the writable mapping and the buffer, no overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(buf.as_ptr(), map.ptr.add(c * chunk), chunk);
            }
            std::hint::black_box(map.ptr);
        }
    };
    // Untimed: fault every page in (allocating blocks of a new file) and warm the buffer.
    write_pass(&buf);
    read_pass(&mut buf);
    let t = Instant::now();
    for _ in 0..passes {
        read_pass(&mut buf);
    }
    let read = t.elapsed();
    let t = Instant::now();
    for _ in 0..passes {
        write_pass(&buf);
    }
    let write = t.elapsed();
    drop(map);
    let mib = (chunks * chunk * passes) as f64 / (1 << 20) as f64;
    let rate = |d: Duration| (mib / d.as_secs_f64().max(1e-9) * 10.0).round() / 10.0;
    println!("{}", sample_line(&tag, "read_mib_s", rate(read)));
    println!("{}", sample_line(&tag, "write_mib_s", rate(write)));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// write-time, report, host-info
// ---------------------------------------------------------------------------------------------

fn write_time(args: &[String]) -> Result<(), Failure> {
    let [file, value] = args else {
        return Err(Failure::usage("write-time FILE VALUE"));
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| Failure::usage(format!("opening {file}: {e}")))?;
    let t = Instant::now();
    f.write_all(value.as_bytes())
        .map_err(|e| Failure::usage(format!("writing {value:?} to {file}: {e}")))?;
    let us = t.elapsed().as_micros();
    println!("{us}");
    Ok(())
}

fn report(args: &[String]) -> Result<(), Failure> {
    let o = Opts::parse(args, &[])?;
    let tag = o.need("tag")?.to_string();
    let Some(file) = o.rest.first() else {
        return Err(Failure::usage("report --tag T FILE"));
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::tagged(&tag, format!("reading the vmm report {file}: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Failure::tagged(&tag, format!("parsing the vmm report {file}: {e}")))?;
    let dev = &v["pmem"][0];
    if dev.is_null() {
        return Err(Failure::tagged(
            &tag,
            format!("{file} names no pmem device"),
        ));
    }
    for key in [
        "size",
        "ram_cost_bytes",
        "memmap_bytes",
        "device_reserve_bytes",
        "data_offset",
        "capacity",
    ] {
        if let Some(n) = dev[key].as_f64() {
            println!("{}", sample_line(&tag, &format!("formula_{key}"), n));
        }
    }
    for key in ["mode", "memmap", "align", "info_block_written"] {
        if !dev[key].is_null() {
            let text = match &dev[key] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{}", info_line(&tag, key, &text));
        }
    }
    Ok(())
}

fn host_info(args: &[String]) -> Result<(), Failure> {
    let o = Opts::parse(args, &[])?;
    let tag = o.need("tag")?;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let meminfo = read("/proc/meminfo");
    let mem_kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0")
        .to_string();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let facts = [
        ("kernel", read("/proc/sys/kernel/osrelease")),
        ("cpu_model", field("model name")),
        ("cpus", cpus.to_string()),
        ("address_sizes", field("address sizes")),
        ("mem_total_kib", mem_kib),
        (
            "clocksource",
            read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        ),
        ("kvm", std::path::Path::new("/dev/kvm").exists().to_string()),
    ];
    for (k, v) in facts {
        println!("{}", info_line(tag, k, v.trim()));
    }
    Ok(())
}
