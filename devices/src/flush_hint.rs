//! NFIT flush hints: one MMIO page per DIMM that the guest writes when it needs its pmem writes
//! durable (Linux's `generic_nvdimm_flush()`, called for REQ_PREFLUSH/REQ_FUA, i.e. fsync on a
//! filesystem or DAX file and `sync` on the block device).
//!
//! The write reaches the monitor as an MMIO exit, the vCPU hands it to the MMIO bus and waits
//! until [`FlushHints`]' `write` returns, so a guest fsync completes only after the host side
//! is durable too: `msync` for file and block-device backings, nothing for device-dax (see
//! `PmemMapping::flush`). Without hints the guest assumes an ADR platform and the host would
//! learn of nothing until it exits.
//!
//! Flushes are group-committed per DIMM (an `msync` of a whole mapping takes milliseconds, and
//! every vCPU in an fsync loop asks for one): at most one host flush per DIMM is in flight, run
//! by the vCPU thread of the first request that needs it; requests that arrive while it runs
//! wait for the next one and share it. No worker thread: the vCPUs' seccomp filter covers it.
//!
//! A flush that fails is never reported as done: [`FlushHints::write`] returns the error and the
//! caller must not complete the guest's write (the monitor stops the guest instead, see the
//! README). The hint register has no way to carry an error back, and after a failed writeback
//! the kernel has already dropped the dirty state of the pages it could not write, so no later
//! flush can make the lost data durable: letting the guest continue would let its fsync succeed
//! over data that is gone.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};

use thiserror::Error;

use crate::bus::{DeviceFault, MmioDevice};
use crate::pmem::backing::BackingError;
use crate::pmem::mapping::PmemMapping;

/// Bytes of MMIO per DIMM; Linux ioremaps a whole page for each hint.
pub const FLUSH_HINT_STRIDE: u64 = 4096;

/// What a DIMM's flush hint makes durable: its backing's mapping.
pub trait FlushTarget: Send + Sync {
    fn flush(&self) -> Result<(), BackingError>;
}

impl FlushTarget for PmemMapping {
    fn flush(&self) -> Result<(), BackingError> {
        PmemMapping::flush(self)
    }
}

/// The host could not make DIMM `index`'s data durable for a guest flush. Every guest request
/// the failed host flush covered gets one, sharing the error.
#[derive(Debug, Error)]
#[error("DIMM {index}: {source}")]
pub struct FlushFailed {
    /// The DIMM, in command-line order.
    pub index: usize,
    pub source: Arc<BackingError>,
}

/// One DIMM's flush counters (the API's `vm.counters`, the log line at exit).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    /// Guest writes to the DIMM's hint, including those that failed.
    pub requests: u64,
    /// Host flushes (`msync`s) that succeeded; none for a read-only DIMM.
    pub host_flushes: u64,
    /// Host flushes that failed (each failed every request it covered).
    pub failed_host_flushes: u64,
    /// The most guest requests one host flush covered.
    pub largest_batch: u64,
}

/// One host flush and the guest requests it covers.
struct Batch {
    /// Set once, under the DIMM's lock, when the host flush has finished.
    result: OnceLock<Result<(), Arc<BackingError>>>,
}

impl Batch {
    fn new() -> Arc<Self> {
        Arc::new(Batch {
            result: OnceLock::new(),
        })
    }
}

/// A DIMM's group commit, under its lock.
struct Commit {
    /// The batch new requests join: the next host flush, which has not started. A flush already
    /// in flight never covers a request that arrives during it (the guest may have written its
    /// data after that `msync` began).
    next: Arc<Batch>,
    /// Requests in `next`.
    waiting: u64,
    /// A host flush is running (outside the lock); at most one per DIMM.
    in_flight: bool,
    /// Sequence numbers: requests made, host flushes started and finished (either way).
    requested: u64,
    started: u64,
    completed: u64,
}

/// One DIMM's flush hint: its group commit and counters.
struct Dimm {
    commit: Mutex<Commit>,
    /// Signalled whenever a host flush finishes.
    finished: Condvar,
    requests: AtomicU64,
    host_flushes: AtomicU64,
    failed_host_flushes: AtomicU64,
    largest_batch: AtomicU64,
}

impl Default for Dimm {
    fn default() -> Self {
        Dimm {
            commit: Mutex::new(Commit {
                next: Batch::new(),
                waiting: 0,
                in_flight: false,
                requested: 0,
                started: 0,
                completed: 0,
            }),
            finished: Condvar::new(),
            requests: AtomicU64::new(0),
            host_flushes: AtomicU64::new(0),
            failed_host_flushes: AtomicU64::new(0),
            largest_batch: AtomicU64::new(0),
        }
    }
}

impl Dimm {
    fn lock(&self) -> MutexGuard<'_, Commit> {
        self.commit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Group commit: returns once a host flush of `target` that started after this call began
    /// has finished, with that flush's result. The request joins the next batch; while a
    /// flush is in flight it waits, and when none is, the first waiter of the batch becomes its
    /// leader and runs the flush for all of them (outside the lock, so others can join the
    /// batch after it).
    fn flush(&self, target: &dyn FlushTarget) -> Result<(), Arc<BackingError>> {
        let mut commit = self.lock();
        commit.requested += 1;
        commit.waiting += 1;
        let batch = commit.next.clone();
        loop {
            if let Some(result) = batch.result.get() {
                return result.clone();
            }
            if commit.in_flight {
                commit = self
                    .finished
                    .wait(commit)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Nothing in flight and our batch has no result: it has not started, so it is
            // still `next` (a batch leaves `next` only when its flush starts). We lead it.
            debug_assert!(Arc::ptr_eq(&batch, &commit.next));
            commit.in_flight = true;
            commit.started += 1;
            let members = std::mem::take(&mut commit.waiting);
            commit.next = Batch::new();
            drop(commit);
            self.largest_batch.fetch_max(members, Ordering::Relaxed);
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| target.flush()));
            let (result, panicked) = match outcome {
                Ok(result) => (result.map_err(Arc::new), None),
                Err(payload) => (
                    Err(Arc::new(BackingError::Io {
                        path: "(flush target)".into(),
                        op: "flush (panicked)",
                        source: std::io::Error::other("the host flush panicked"),
                    })),
                    Some(payload),
                ),
            };
            match &result {
                Ok(()) => self.host_flushes.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.failed_host_flushes.fetch_add(1, Ordering::Relaxed),
            };
            commit = self.lock();
            let _ = batch.result.set(result);
            commit.in_flight = false;
            commit.completed += 1;
            drop(commit);
            self.finished.notify_all();
            if let Some(payload) = panicked {
                panic::resume_unwind(payload);
            }
            commit = self.lock();
        }
    }

    fn reset_counters(&self) {
        for c in [
            &self.requests,
            &self.host_flushes,
            &self.failed_host_flushes,
            &self.largest_batch,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn stats(&self) -> FlushStats {
        FlushStats {
            requests: self.requests.load(Ordering::Relaxed),
            host_flushes: self.host_flushes.load(Ordering::Relaxed),
            failed_host_flushes: self.failed_host_flushes.load(Ordering::Relaxed),
            largest_batch: self.largest_batch.load(Ordering::Relaxed),
        }
    }
}

/// The flush-hint pages of all DIMMs: one MMIO range on the [`MmioBus`](crate::bus::MmioBus),
/// DIMM `i`'s page at offset `i * FLUSH_HINT_STRIDE`.
///
/// Flushes are group-committed per DIMM: at most one host flush of a DIMM is in flight; a guest
/// request that arrives meanwhile waits for the next one, which serves every request that
/// arrived during the one before. A request never completes on a flush that started before it
/// arrived, and a failed flush fails every request it covered.
pub struct FlushHints {
    /// One entry per DIMM slot the MMIO range covers; a hot-added DIMM fills its slot.
    targets: RwLock<Vec<Option<Arc<dyn FlushTarget>>>>,
    /// Guest flush requests served (durable, or nothing to flush), all DIMMs.
    flushes: AtomicU64,
    /// Per DIMM slot.
    dimms: Vec<Dimm>,
}

impl FlushHints {
    /// `targets[i]` is DIMM `i`'s mapping, or None when there is nothing to flush (read-only).
    pub fn new(targets: Vec<Option<Arc<dyn FlushTarget>>>) -> Self {
        let capacity = targets.len();
        Self::with_capacity(targets, capacity)
    }

    /// As [`new`](Self::new), with pages for `capacity` DIMMs (at least `targets.len()`), so
    /// DIMMs added later ([`set_target`](Self::set_target)) have their hint in the same range.
    pub fn with_capacity(mut targets: Vec<Option<Arc<dyn FlushTarget>>>, capacity: usize) -> Self {
        let capacity = capacity.max(targets.len());
        targets.resize_with(capacity, || None);
        let dimms = (0..capacity).map(|_| Dimm::default()).collect();
        FlushHints {
            targets: RwLock::new(targets),
            flushes: AtomicU64::new(0),
            dimms,
        }
    }

    /// Gives DIMM `index` (a hot-added one) its flush target, or takes it away (`None`: the
    /// DIMM was removed, the slot's page flushes nothing). A new target starts with zero
    /// counters, so a DIMM that takes a freed slot does not report its predecessor's. False
    /// when `index` is beyond the range.
    pub fn set_target(&self, index: usize, target: Option<Arc<dyn FlushTarget>>) -> bool {
        let mut targets = self.targets.write().unwrap_or_else(|e| e.into_inner());
        match targets.get_mut(index) {
            Some(slot) => {
                if target.is_some() {
                    self.dimms[index].reset_counters();
                }
                *slot = target;
                true
            }
            None => false,
        }
    }

    /// The guest-physical address of DIMM `index`'s hint when the hints sit at `base`.
    pub fn address(base: u64, index: usize) -> u64 {
        base + index as u64 * FLUSH_HINT_STRIDE
    }

    /// Bytes of MMIO the hints take: the length of their bus range.
    pub fn len(&self) -> u64 {
        self.dimms.len() as u64 * FLUSH_HINT_STRIDE
    }

    /// No DIMMs, no hints. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.dimms.is_empty()
    }

    /// How many guest flushes were served.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// DIMM `index`'s counters: guest flush requests (writes to its hint, including those that
    /// failed) and host flushes that succeeded (none for a read-only DIMM).
    pub fn counters(&self, index: usize) -> (u64, u64) {
        let s = self.stats(index);
        (s.requests, s.host_flushes)
    }

    /// All of DIMM `index`'s counters (zero beyond the range).
    pub fn stats(&self, index: usize) -> FlushStats {
        self.dimms
            .get(index)
            .map_or_else(FlushStats::default, Dimm::stats)
    }
}

impl MmioDevice for FlushHints {
    /// Linux never reads a hint; a read sees all ones, as an unclaimed address would.
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    /// A guest write anywhere in DIMM `i`'s page flushes that DIMM before the vCPU continues:
    /// the calling vCPU blocks until a host flush that started after the write arrived has
    /// finished (group commit, see [`FlushHints`]). The value written does not matter (Linux
    /// writes 1). A flush that failed is the device's fault ([`FlushFailed`]): the guest's
    /// write must not complete.
    fn write(&self, offset: u64, _data: &[u8]) -> Result<(), DeviceFault> {
        let index = (offset / FLUSH_HINT_STRIDE) as usize;
        let dimm = self.dimms.get(index);
        if let Some(d) = dimm {
            d.requests.fetch_add(1, Ordering::Relaxed);
        }
        let target = self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(index)
            .cloned()
            .flatten();
        if let (Some(target), Some(d)) = (target, dimm) {
            d.flush(target.as_ref())
                .map_err(|source| DeviceFault::new(FlushFailed { index, source }))?;
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MmioBus;
    use crate::pmem::backing::{Backing, BackingRequest};

    #[test]
    fn writes_to_a_hint_flush_that_dimm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pmem");
        let backing = Backing::open(&BackingRequest {
            path: path.clone(),
            size: Some(2 << 20),
            readonly: false,
        })
        .unwrap();
        let mapping = Arc::new(backing.map().unwrap());
        // SAFETY: the mapping is 2 MiB long and writable; offset 100 is inside it.
        unsafe { mapping.as_ptr().add(100).write_volatile(0x5a) };
        let hints = Arc::new(FlushHints::new(vec![None, Some(mapping.clone())]));
        assert_eq!(hints.len(), 0x2000);
        let mut bus = MmioBus::new();
        bus.insert(0xfe00_0000, hints.len(), hints.clone()).unwrap();
        assert!(!bus.write(0xfdff_f000, &[1]).unwrap());
        assert!(!bus.write(0xfe00_2000, &[1]).unwrap());
        assert!(
            bus.write(0xfe00_0000, &[1]).unwrap(),
            "read-only DIMM: served, nothing to flush"
        );
        assert!(bus
            .write(FlushHints::address(0xfe00_0000, 1) + 8, &[1])
            .unwrap());
        assert_eq!(hints.flush_count(), 2);
        assert_eq!(
            hints.counters(0),
            (1, 0),
            "read-only: asked, nothing to flush"
        );
        assert_eq!(hints.counters(1), (1, 1));
        assert_eq!(hints.counters(7), (0, 0));
        assert_eq!(std::fs::read(&path).unwrap()[100], 0x5a);
    }

    /// A backing whose writeback fails (as msync does with EIO on a failing disk).
    struct Failing;

    impl FlushTarget for Failing {
        fn flush(&self) -> Result<(), BackingError> {
            Err(BackingError::Io {
                path: "/dev/broken".into(),
                op: "msync",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            })
        }
    }

    #[test]
    fn a_failed_flush_is_not_reported_as_done() {
        let hints = FlushHints::new(vec![None, Some(Arc::new(Failing))]);
        let e = hints
            .write(FLUSH_HINT_STRIDE, &[1])
            .expect_err("a failed msync must not complete the guest's flush");
        let text = e.to_string();
        assert!(text.starts_with("DIMM 1: "), "{text}");
        assert!(
            text.contains("/dev/broken") && text.contains("msync"),
            "{text}"
        );
        assert!(text.contains("Input/output error"), "{text}");
        assert_eq!(
            hints.flush_count(),
            0,
            "a failed flush is not counted as served"
        );
        assert_eq!(hints.counters(1), (1, 0));
        assert_eq!(hints.stats(1).failed_host_flushes, 1);
    }

    /// A fake backing that records, on a logical clock shared with the requests, when each of
    /// its flushes started and finished, and how many ran at once.
    struct Recorder {
        clock: Arc<AtomicU64>,
        in_flight: AtomicU64,
        max_in_flight: AtomicU64,
        /// (start, end) of each flush, in clock ticks.
        flushes: Mutex<Vec<(u64, u64)>>,
    }

    impl FlushTarget for Recorder {
        fn flush(&self) -> Result<(), BackingError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let start = self.clock.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_micros(300));
            let end = self.clock.fetch_add(1, Ordering::SeqCst);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.flushes.lock().unwrap().push((start, end));
            Ok(())
        }
    }

    #[test]
    fn concurrent_requests_share_flushes_that_started_after_them() {
        const THREADS: usize = 16;
        const EACH: usize = 40;
        let clock = Arc::new(AtomicU64::new(0));
        let recorder = Arc::new(Recorder {
            clock: clock.clone(),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            flushes: Mutex::new(Vec::new()),
        });
        let hints = Arc::new(FlushHints::new(vec![Some(recorder.clone())]));
        let requests: Vec<(u64, u64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (hints, clock) = (&hints, &clock);
                    s.spawn(move || {
                        (0..EACH)
                            .map(|_| {
                                let asked = clock.fetch_add(1, Ordering::SeqCst);
                                hints.write(0, &[1]).unwrap();
                                (asked, clock.fetch_add(1, Ordering::SeqCst))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let flushes = recorder.flushes.lock().unwrap().clone();
        let stats = hints.stats(0);
        let total = (THREADS * EACH) as u64;
        assert_eq!(stats.requests, total);
        assert_eq!(hints.flush_count(), total);
        assert_eq!(stats.host_flushes, flushes.len() as u64);
        assert_eq!(stats.failed_host_flushes, 0);
        assert!(stats.host_flushes <= stats.requests, "{stats:?}");
        assert!(
            stats.host_flushes < stats.requests && stats.largest_batch > 1,
            "{THREADS} threads hammering one DIMM never shared a flush: {stats:?}"
        );
        assert_eq!(
            recorder.max_in_flight.load(Ordering::SeqCst),
            1,
            "two host flushes of one DIMM ran at once"
        );
        for (asked, returned) in requests {
            assert!(
                flushes
                    .iter()
                    .any(|&(start, end)| start > asked && end < returned),
                "request at {asked} returned at {returned} without a flush that started after \
                 it and finished before: {flushes:?}"
            );
        }
        let c = hints.dimms[0].lock();
        assert_eq!(
            (c.requested, c.started, c.completed, c.in_flight),
            (total, flushes.len() as u64, flushes.len() as u64, false)
        );
    }

    /// A fake backing whose n-th flush waits until the test releases it, and fails when n is
    /// in `fail`.
    struct Gated {
        state: Mutex<(u64, u64)>, // (flushes started, flushes released)
        changed: std::sync::Condvar,
        fail: Vec<u64>,
    }

    impl Gated {
        fn new(fail: Vec<u64>) -> Arc<Self> {
            Arc::new(Gated {
                state: Mutex::new((0, 0)),
                changed: std::sync::Condvar::new(),
                fail,
            })
        }

        fn release(&self, n: u64) {
            self.state.lock().unwrap().1 = n;
            self.changed.notify_all();
        }

        /// Waits (at most 10 s, so a broken group commit fails the test rather than hangs it)
        /// until flush `n` has started.
        fn wait_started(&self, n: u64) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut s = self.state.lock().unwrap();
            while s.0 < n {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                assert!(!left.is_zero(), "flush {n} never started");
                s = self.changed.wait_timeout(s, left).unwrap().0;
            }
        }
    }

    impl FlushTarget for Gated {
        fn flush(&self) -> Result<(), BackingError> {
            let mut s = self.state.lock().unwrap();
            s.0 += 1;
            let n = s.0;
            self.changed.notify_all();
            while s.1 < n {
                s = self.changed.wait(s).unwrap();
            }
            if self.fail.contains(&n) {
                return Err(BackingError::Io {
                    path: "/dev/flaky".into(),
                    op: "msync",
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                });
            }
            Ok(())
        }
    }

    /// Waits until DIMM `index` has seen `n` requests in all.
    fn wait_requested(hints: &FlushHints, index: usize, n: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while hints.dimms[index].lock().requested < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} requests never arrived"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_failed_flush_fails_all_its_waiters_and_none_of_the_next() {
        let gated = Gated::new(vec![2]);
        let hints = FlushHints::new(vec![None, Some(gated.clone())]);
        let hint = FLUSH_HINT_STRIDE;
        std::thread::scope(|s| {
            // Flush 1 is in flight for request A.
            let a = s.spawn(|| hints.write(hint, &[1]).map_err(|e| e.to_string()));
            gated.wait_started(1);
            // B1..B4 arrive during flush 1: flush 1 does not cover them, flush 2 will.
            let b: Vec<_> = (0..4)
                .map(|_| s.spawn(|| hints.write(hint, &[1]).map_err(|e| e.to_string())))
                .collect();
            wait_requested(&hints, 1, 5);
            assert!(!a.is_finished(), "A returned before its flush finished");
            gated.release(1);
            assert_eq!(a.join().unwrap(), Ok(()));
            // Flush 2 (for B) is in flight; C1..C3 arrive during it and wait for flush 3.
            gated.wait_started(2);
            let c: Vec<_> = (0..3)
                .map(|_| s.spawn(|| hints.write(hint, &[1]).map_err(|e| e.to_string())))
                .collect();
            wait_requested(&hints, 1, 8);
            gated.release(2);
            for b in b {
                let e = b
                    .join()
                    .unwrap()
                    .expect_err("flush 2 failed: so did its requests");
                assert!(e.starts_with("DIMM 1: ") && e.contains("/dev/flaky"), "{e}");
            }
            gated.wait_started(3);
            gated.release(3);
            for c in c {
                assert_eq!(c.join().unwrap(), Ok(()), "flush 3 succeeded");
            }
        });
        assert_eq!(
            hints.stats(1),
            FlushStats {
                requests: 8,
                host_flushes: 2,
                failed_host_flushes: 1,
                largest_batch: 4,
            }
        );
        assert_eq!(hints.flush_count(), 4);
    }

    #[test]
    fn dimms_flush_independently() {
        let slow = Gated::new(vec![]);
        let fast = Gated::new(vec![]);
        fast.release(u64::MAX);
        let hints = FlushHints::new(vec![Some(slow.clone()), Some(fast.clone())]);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| hints.write(0, &[1]).is_ok());
            slow.wait_started(1);
            // DIMM 0's flush is in flight; DIMM 1's requests neither wait for it nor join it.
            for _ in 0..3 {
                hints.write(FLUSH_HINT_STRIDE, &[1]).unwrap();
            }
            assert!(!waiting.is_finished());
            assert_eq!(hints.counters(1), (3, 3));
            assert_eq!(hints.counters(0), (1, 0));
            slow.release(1);
            assert!(waiting.join().unwrap());
        });
        assert_eq!(hints.counters(0), (1, 1));
    }
}
