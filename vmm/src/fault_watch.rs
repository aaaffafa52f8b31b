//! Notices a vCPU whose page fault KVM retries forever, so that a backing failing under a guest
//! that runs with HLT exits (the default) stops the guest like it does with `--halt-in-guest`.
//!
//! Why it is needed: with HLT exits, KVM answers a guest access to a host page it cannot get
//! without waiting with an asynchronous page fault (virt/kvm/async_pf.c). When getting the page
//! fails (a hole on a full file system, an EIO, a removed device-dax), the vCPU retries the
//! access and KVM goes asynchronous again, forever: `KVM_RUN` never returns, and the monitor
//! hears nothing (`vm::halt_in_guest` has the details).
//!
//! How: KVM counts every fault it takes and, separately, how each ended (fixed, emulated,
//! spurious); a retried fault has no ending, so a vCPU in that loop makes its unresolved count
//! (`kvm_stats::FaultCounts::unresolved`) grow at every retry. The main thread samples each
//! vCPU's counts once a second; a vCPU whose count grew by at least [`MIN_RETRIES`] in each of
//! [`SUSPECT_SAMPLES`] samples in a row is *suspect*. A slow but healthy backing makes KVM wait
//! asynchronously too, so suspicion alone stops nothing: the run loop then asks every backing
//! what is wrong (`PmemDevices::diagnose_fault`) and stops the guest only for a cause a backing
//! confirms. When none does, the guest goes on, and the watch asks again only after
//! [`FIRST_RECHECK`], doubling up to [`MAX_RECHECK`], so a busy guest on a slow backing costs
//! the host a probe now and then, never a flood.

use std::time::{Duration, Instant};

use log::warn;

use crate::kvm_stats::{FaultCounts, VcpuStats};

/// How often the counts are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples in a row in which a suspect vCPU's unresolved count grew.
pub const SUSPECT_SAMPLES: u32 = 3;
/// Growth of the unresolved count per sample that counts as retrying. A healthy vCPU's figure
/// stays near zero (each asynchronous wait ends with its page fixed); a vCPU retrying a failing
/// page grows it by hundreds or thousands a second.
pub const MIN_RETRIES: i64 = 16;
/// Quiet time after a diagnosis that found nothing, doubled each time up to [`MAX_RECHECK`].
pub const FIRST_RECHECK: Duration = Duration::from_secs(10);
pub const MAX_RECHECK: Duration = Duration::from_secs(600);

/// A vCPU that looks stuck retrying a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspect {
    pub vcpu: u32,
    /// Faults KVM took without an outcome over the suspect samples.
    pub retries: i64,
}

/// The pure part: per vCPU, the last unresolved count and how many samples in a row it grew by
/// at least [`MIN_RETRIES`].
#[derive(Debug, Default)]
pub struct RetryTracker {
    last: Vec<Option<i64>>,
    streak: Vec<(u32, i64)>,
}

impl RetryTracker {
    pub fn new(vcpus: usize) -> RetryTracker {
        RetryTracker {
            last: vec![None; vcpus],
            streak: vec![(0, 0); vcpus],
        }
    }

    /// Takes vCPU `vcpu`'s unresolved count; says whether the vCPU is suspect now.
    pub fn observe(&mut self, vcpu: usize, unresolved: i64) -> Option<Suspect> {
        let last = self.last.get_mut(vcpu)?;
        let previous = last.replace(unresolved)?;
        let grown = unresolved.wrapping_sub(previous);
        let (samples, retries) = &mut self.streak[vcpu];
        if grown >= MIN_RETRIES {
            *samples += 1;
            *retries = retries.saturating_add(grown);
        } else {
            *samples = 0;
            *retries = 0;
        }
        (*samples >= SUSPECT_SAMPLES).then_some(Suspect {
            vcpu: vcpu as u32,
            retries: *retries,
        })
    }

    /// Forgets every streak (after a diagnosis): suspicion has to build up again.
    pub fn reset(&mut self) {
        self.streak.iter_mut().for_each(|s| *s = (0, 0));
    }
}

/// The watch over a VM's vCPUs, driven by the run loop.
#[derive(Debug)]
pub struct FaultWatch {
    stats: Vec<VcpuStats>,
    tracker: RetryTracker,
    next_sample: Instant,
    quiet_until: Instant,
    recheck: Duration,
    read_failed: bool,
}

impl FaultWatch {
    /// A watch over the vCPUs whose statistics these are (vCPU *i*'s at index *i*).
    pub fn new(stats: Vec<VcpuStats>, now: Instant) -> FaultWatch {
        FaultWatch {
            tracker: RetryTracker::new(stats.len()),
            stats,
            next_sample: now,
            quiet_until: now,
            recheck: FIRST_RECHECK,
            read_failed: false,
        }
    }

    /// Samples the counts if a sample is due; returns the first suspect vCPU, if any, unless a
    /// diagnosis that found nothing is recent.
    pub fn poll(&mut self, now: Instant) -> Option<Suspect> {
        if self.stats.is_empty() || now < self.next_sample {
            return None;
        }
        self.next_sample = now + SAMPLE_EVERY;
        let mut suspect = None;
        for (i, s) in self.stats.iter().enumerate() {
            match s.read() {
                Ok(c) => {
                    let seen = self.tracker.observe(i, FaultCounts::unresolved(&c));
                    suspect = suspect.or(seen);
                }
                Err(e) if !self.read_failed => {
                    self.read_failed = true;
                    warn!("vCPU {i}: {e}; a fault KVM retries forever may go unnoticed");
                }
                Err(_) => {}
            }
        }
        if now < self.quiet_until {
            return None;
        }
        suspect
    }

    /// The diagnosis of `suspect` found no backing at fault: the guest goes on, and the watch
    /// waits before it asks again.
    pub fn cleared(&mut self, suspect: Suspect, now: Instant) {
        warn!(
            "vCPU {}: KVM retried {} page faults in {} s without mapping them, but no backing \
             reports a fault; the guest goes on (asking again in {} s)",
            suspect.vcpu,
            suspect.retries,
            SUSPECT_SAMPLES,
            self.recheck.as_secs()
        );
        self.tracker.reset();
        self.quiet_until = now + self.recheck;
        self.recheck = (self.recheck * 2).min(MAX_RECHECK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_retrying_in_every_sample_is_suspect() {
        let mut t = RetryTracker::new(2);
        // The first sample only sets the baseline.
        assert_eq!(t.observe(0, 1_000), None);
        assert_eq!(t.observe(0, 1_500), None);
        assert_eq!(t.observe(0, 2_000), None);
        assert_eq!(
            t.observe(0, 2_600),
            Some(Suspect {
                vcpu: 0,
                retries: 1_600
            })
        );
        // Still growing: still suspect.
        assert!(t.observe(0, 3_000).is_some());
        // Another vCPU is judged on its own counts.
        assert_eq!(t.observe(1, 0), None);
        assert_eq!(t.observe(1, 0), None);
    }

    #[test]
    fn a_pause_in_the_growth_clears_the_streak() {
        let mut t = RetryTracker::new(1);
        t.observe(0, 0);
        t.observe(0, 100);
        t.observe(0, 200);
        // A sample with fewer than MIN_RETRIES new retries: a healthy wait ended.
        assert_eq!(t.observe(0, 200 + MIN_RETRIES - 1), None);
        t.observe(0, 400);
        t.observe(0, 600);
        assert!(t.observe(0, 800).is_some());
        t.reset();
        assert_eq!(t.observe(0, 1_000), None);
    }

    #[test]
    fn healthy_asynchronous_waits_are_never_suspect() {
        // Each wait ends fixed (counted as fixed but never taken): the figure falls or stays.
        let mut t = RetryTracker::new(1);
        for unresolved in [0, -40, -80, -80, -79, -120, -160] {
            assert_eq!(t.observe(0, unresolved), None);
        }
        // An unknown vCPU is ignored.
        assert_eq!(t.observe(5, 1 << 40), None);
    }

    fn watch_over(counts: &[[u64; 4]]) -> (FaultWatch, Vec<tempfile::NamedTempFile>) {
        let files: Vec<_> = counts
            .iter()
            .map(|c| {
                let mut f = tempfile::NamedTempFile::new().unwrap();
                std::io::Write::write_all(&mut f, &crate::kvm_stats::recorded::with_faults(*c))
                    .unwrap();
                f
            })
            .collect();
        let stats = files
            .iter()
            .map(|f| VcpuStats::from_file(f.reopen().unwrap()).unwrap())
            .collect();
        (FaultWatch::new(stats, Instant::now()), files)
    }

    fn set(f: &tempfile::NamedTempFile, c: [u64; 4]) {
        use std::os::unix::fs::FileExt;
        f.as_file()
            .write_all_at(&crate::kvm_stats::recorded::with_faults(c), 0)
            .unwrap();
    }

    /// The watch reads KVM's statistics files: one sample per second, a suspect after three
    /// growing samples, then quiet for the recheck time after a diagnosis found nothing.
    #[test]
    fn the_watch_samples_the_statistics_files() {
        let (mut w, files) = watch_over(&[[10, 10, 0, 0], [0, 0, 0, 0]]);
        let t0 = Instant::now();
        assert_eq!(w.poll(t0), None);
        let mut taken = 10;
        let mut at = t0;
        let mut found = None;
        for _ in 0..SUSPECT_SAMPLES {
            taken += 500;
            set(&files[1], [taken, 10, 0, 0]);
            // Before the next sample is due nothing is read.
            assert_eq!(w.poll(at + SAMPLE_EVERY / 2), None);
            at += SAMPLE_EVERY;
            found = w.poll(at);
        }
        assert_eq!(
            found,
            Some(Suspect {
                vcpu: 1,
                retries: 500 * i64::from(SUSPECT_SAMPLES)
            })
        );
        w.cleared(found.unwrap(), at);
        for _ in 0..SUSPECT_SAMPLES + 2 {
            taken += 500;
            set(&files[1], [taken, 10, 0, 0]);
            at += SAMPLE_EVERY;
            assert_eq!(w.poll(at), None, "quiet after a diagnosis found nothing");
        }
        at += FIRST_RECHECK;
        taken += 500;
        set(&files[1], [taken, 10, 0, 0]);
        assert!(w.poll(at).is_some());
        assert_eq!(w.recheck, FIRST_RECHECK * 2);
        // vCPU 0 never moved.
        set(&files[0], [10, 10, 0, 0]);
    }
}
