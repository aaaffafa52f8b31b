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
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let now = Instant::now();
                    if tx
                        .send((now, String::from_utf8_lossy(&buf).into_owned()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
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
