//! The lines `bench-probe` and the host scripts print, and their parsing.
//!
//! * `@@BENCH <tag> <metric> <value>@@`: one sample (a number);
//! * `@@BENCH-INFO <tag> <key> <text>@@`: a fact (a version, a policy the monitor chose);
//! * `@@BENCH-FAIL <tag> <reason>@@`: a measurement that did not happen, and why.
//!
//! A tag is `<phase>.<case>.<run>` (`boot.vmm-8.3`); cases contain no dots or spaces.

use testbed::marker_values;

/// Sample marker name.
pub const BENCH: &str = "BENCH";
/// Information marker name.
pub const BENCH_INFO: &str = "BENCH-INFO";
/// Failure marker name.
pub const BENCH_FAIL: &str = "BENCH-FAIL";

/// A parsed tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    /// `boot`, `startup`, `memmap`, `bandwidth`, `machine`.
    pub phase: String,
    /// What was measured (`vmm-8`, `ram-4G`, `guest-devdax`).
    pub case: String,
    /// 1-based run number (0 when the tag has none).
    pub run: usize,
}

impl Tag {
    /// Parses `phase.case.run` (or `phase.case`).
    pub fn parse(tag: &str) -> Tag {
        let (phase, rest) = tag.split_once('.').unwrap_or((tag, ""));
        let (case, run) = match rest.rsplit_once('.') {
            Some((case, run)) if run.parse::<usize>().is_ok() => {
                (case.to_string(), run.parse().unwrap_or(0))
            }
            _ => (rest.to_string(), 0),
        };
        Tag {
            phase: phase.to_string(),
            case,
            run,
        }
    }

    /// Formats a tag.
    pub fn format(phase: &str, case: &str, run: usize) -> String {
        format!("{phase}.{case}.{run}")
    }
}

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Where it belongs.
    pub tag: Tag,
    /// What it is (`launch_ms`, `rss_kib`, `read_mib_s`).
    pub metric: String,
    /// Its value.
    pub value: f64,
}

/// One fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Where it belongs.
    pub tag: Tag,
    /// Its name.
    pub key: String,
    /// Its text.
    pub text: String,
}

/// One failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where it happened.
    pub tag: Tag,
    /// Why.
    pub reason: String,
}

/// Everything found in a script's output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// Samples, in output order.
    pub samples: Vec<Sample>,
    /// Facts.
    pub infos: Vec<Info>,
    /// Failures.
    pub failures: Vec<Failure>,
}

/// Parses every bench line in `text`. Malformed lines are ignored.
pub fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    for v in marker_values(text, BENCH) {
        let mut it = v.split_whitespace();
        if let (Some(tag), Some(metric), Some(value), None) =
            (it.next(), it.next(), it.next(), it.next())
        {
            if let Ok(value) = value.parse::<f64>() {
                p.samples.push(Sample {
                    tag: Tag::parse(tag),
                    metric: metric.to_string(),
                    value,
                });
            }
        }
    }
    for v in marker_values(text, BENCH_INFO) {
        let mut it = v.splitn(3, ' ');
        if let (Some(tag), Some(key), Some(text)) = (it.next(), it.next(), it.next()) {
            p.infos.push(Info {
                tag: Tag::parse(tag),
                key: key.to_string(),
                text: text.trim().to_string(),
            });
        }
    }
    for v in marker_values(text, BENCH_FAIL) {
        let (tag, reason) = v.split_once(' ').unwrap_or((v, "no reason given"));
        p.failures.push(Failure {
            tag: Tag::parse(tag),
            reason: reason.trim().to_string(),
        });
    }
    p
}

/// A sample line.
pub fn sample_line(tag: &str, metric: &str, value: f64) -> String {
    format!("@@{BENCH} {tag} {metric} {value}@@")
}

/// A failure line; the reason is flattened to one line without `@`.
pub fn fail_line(tag: &str, reason: &str) -> String {
    format!("@@{BENCH_FAIL} {tag} {}@@", one_line(reason))
}

/// An information line.
pub fn info_line(tag: &str, key: &str, text: &str) -> String {
    format!("@@{BENCH_INFO} {tag} {key} {}@@", one_line(text))
}

/// `text` on one line, with `@` (which could close the marker early) written as `#`.
pub fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('@', "#")
}

/// Rewrites a line a launched program printed, for the launching probe: a two-field
/// `@@BENCH metric value@@` gets `tag` inserted, an info or failure line with the tag `-` gets
/// `tag` instead; any other bench line passes unchanged.
/// `None` for lines that are not bench lines.
pub fn retag(line: &str, tag: &str) -> Option<String> {
    let start = line.find("@@BENCH")?;
    let body = &line[start + 2..];
    let end = body.find("@@")?;
    let inner = &body[..end];
    let mut words: Vec<&str> = inner.split_whitespace().collect();
    match words.first() {
        Some(&BENCH) if words.len() == 3 => words.insert(1, tag),
        Some(&BENCH_INFO) | Some(&BENCH_FAIL) if words.get(1) == Some(&"-") => words[1] = tag,
        _ => {}
    }
    Some(format!("@@{}@@", words.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(
            Tag::parse("boot.vmm-8.3"),
            Tag {
                phase: "boot".into(),
                case: "vmm-8".into(),
                run: 3
            }
        );
        assert_eq!(Tag::parse("machine.l1").case, "l1");
        assert_eq!(Tag::parse("machine.l1").run, 0);
        assert_eq!(Tag::format("memmap", "ram-1G", 2), "memmap.ram-1G.2");
    }

    #[test]
    fn parses_all_kinds() {
        let text = "noise @@BENCH boot.vmm-0.1 launch_ms 812.5@@\n\
                    @@BENCH boot.vmm-0.1 bad notanumber@@\n\
                    @@BENCH-INFO machine.l1 kernel 6.12.1 #1 SMP@@\n\
                    @@BENCH-FAIL boot.qemu-1.2 exited with status 1 before ##GUEST-INIT##@@\n";
        let p = parse(text);
        assert_eq!(p.samples.len(), 1);
        assert_eq!(p.samples[0].value, 812.5);
        assert_eq!(p.infos[0].text, "6.12.1 #1 SMP");
        assert_eq!(p.failures[0].tag.case, "qemu-1");
        assert!(p.failures[0].reason.starts_with("exited"));
    }

    #[test]
    fn line_builders_round_trip() {
        let text = format!(
            "{}\n{}\n{}\n",
            sample_line("a.b.1", "x_ms", 1.5),
            fail_line("a.b.2", "two\nlines @@x@@"),
            info_line("a.c", "k", "v w")
        );
        let p = parse(&text);
        assert_eq!(p.samples[0].metric, "x_ms");
        assert_eq!(p.failures[0].reason, "two lines ##x##");
        assert_eq!(p.infos[0].text, "v w");
    }

    #[test]
    fn retagging() {
        assert_eq!(
            retag("[  1.0] @@BENCH ram_cost_kib 16384@@\r", "memmap.ram-1G.1").as_deref(),
            Some("@@BENCH memmap.ram-1G.1 ram_cost_kib 16384@@")
        );
        assert_eq!(
            retag("@@BENCH bandwidth.guest-devdax.2 read_mib_s 900@@", "x").as_deref(),
            Some("@@BENCH bandwidth.guest-devdax.2 read_mib_s 900@@")
        );
        assert_eq!(
            retag("@@BENCH-FAIL t why@@", "x").as_deref(),
            Some("@@BENCH-FAIL t why@@")
        );
        assert_eq!(
            retag("@@BENCH-INFO - device nd_pmem/pfn0.1@@", "m.c.1").as_deref(),
            Some("@@BENCH-INFO m.c.1 device nd_pmem/pfn0.1@@")
        );
        assert_eq!(retag("@@GUEST-INIT@@", "x"), None);
    }
}
