//! The monitor's event loop (event-manager): host console input into the guest's UART, the
//! signals that stop the guest, and the wake-up when the guest stops itself.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::lifecycle::{StopReason, StopSignal};
use devices::serial::SerialPort;
use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Copies host input (stdin) into the UART's receive FIFO, never more than fits: when the FIFO
/// is full it stops watching stdin until the guest has read the FIFO empty.
pub struct ConsoleInput {
    input: RawFd,
    serial: Arc<Mutex<SerialPort>>,
    input_ready: EventFd,
    watching_input: bool,
    input_closed: bool,
}

impl ConsoleInput {
    pub fn new(input: RawFd, serial: Arc<Mutex<SerialPort>>, input_ready: EventFd) -> Self {
        ConsoleInput {
            input,
            serial,
            input_ready,
            watching_input: false,
            input_closed: false,
        }
    }

    fn watch_input(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watching_input || (on && self.input_closed) {
            return;
        }
        let ev = Events::new_raw(self.input, EventSet::IN);
        let result = if on { ops.add(ev) } else { ops.remove(ev) };
        match result {
            Ok(()) => self.watching_input = on,
            Err(e) => {
                warn!("console input: cannot change epoll interest: {e:?}");
                self.input_closed = true;
            }
        }
    }

    fn forward_input(&mut self, ops: &mut EventOps) {
        let capacity = self
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .input_capacity();
        if capacity == 0 {
            self.watch_input(ops, false);
            return;
        }
        let mut buf = [0u8; 64];
        let want = capacity.min(buf.len());
        // SAFETY: reads into a stack buffer of at least `want` bytes from a descriptor this
        // process owns for its whole life (stdin); the result is checked below.
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), want) };
        match n {
            0 => {
                debug!("console input closed");
                self.watch_input(ops, false);
                self.input_closed = true;
            }
            n if n > 0 => {
                self.serial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .enqueue_input(&buf[..n as usize]);
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted
                    && err.kind() != io::ErrorKind::WouldBlock
                {
                    warn!("console input: {err}");
                    self.watch_input(ops, false);
                    self.input_closed = true;
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.input_ready, EventSet::IN)) {
            warn!("console input: {e:?}");
        }
        self.watch_input(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input_ready.as_raw_fd() {
            let _ = self.input_ready.read();
            self.watch_input(ops, true);
        } else if events.fd() == self.input {
            if events.event_set().contains(EventSet::IN) {
                self.forward_input(ops);
            } else {
                // HUP or ERR without data: the other end is gone.
                self.watch_input(ops, false);
                self.input_closed = true;
            }
        }
    }
}

/// The signals that ask the monitor to stop the guest.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: as above; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks the stop signals in the calling thread (and the threads it spawns afterwards), so they
/// are only ever consumed through the signalfd of [`SignalWatcher`].
pub fn block_stop_signals() -> io::Result<()> {
    let set = sigset(&STOP_SIGNALS);
    // SAFETY: changes this thread's signal mask with a fully initialised set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Takes one pending stop signal, if any, without waiting. With the stop signals blocked from the
/// start of `main`, the steps before the guest runs call this between steps, so a signal stops
/// the monitor at the next step boundary (after the cleanup of what the run created) instead of
/// killing it in the middle of one.
pub fn take_pending_stop_signal() -> Option<i32> {
    let set = sigset(&STOP_SIGNALS);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `set` and `zero` are initialised values on this frame; a null siginfo pointer is
    // allowed. Only signals blocked in this thread can be pending for sigtimedwait to take.
    let signo = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
    (signo > 0).then_some(signo)
}

/// Turns SIGINT/SIGTERM/SIGHUP into a stop request, and notices when the guest stopped itself.
pub struct SignalWatcher {
    signals: File,
    stop: Arc<StopSignal>,
}

/// A non-blocking signalfd for the stop signals (which must be blocked, see
/// [`block_stop_signals`]): readable while one is pending.
pub fn stop_signalfd() -> io::Result<File> {
    let set = sigset(&STOP_SIGNALS);
    // SAFETY: creates a new signalfd for a valid set; the result is checked.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Sleeps until one of `fds` is readable (no timeout: no wake-ups while nothing happens).
pub fn wait_readable(fds: &[RawFd]) -> io::Result<()> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `polls` is a live array of `polls.len()` initialised pollfd structures that
        // poll may write `revents` into; the descriptors belong to the caller.
        let rc = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl SignalWatcher {
    pub fn new(stop: Arc<StopSignal>) -> io::Result<Self> {
        Ok(SignalWatcher {
            signals: stop_signalfd()?,
            stop,
        })
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for ev in [
            Events::new(&self.signals, EventSet::IN),
            Events::new(self.stop.event(), EventSet::IN),
        ] {
            if let Err(e) = ops.add(ev) {
                warn!("event loop: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.signals.as_raw_fd() {
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            while let Ok(n) = self.signals.read(&mut info) {
                if n != info.len() {
                    break;
                }
                let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32;
                debug!("received signal {signo}");
                self.stop.request(StopReason::Signal(signo));
            }
        } else {
            // The stop eventfd: the run loop checks the reason after each iteration.
            let _ = self.stop.event().read();
        }
    }
}

/// Wakes the event loop when another thread has work for it (an NVDIMM hot-add request): the
/// loop looks for that work after every wake-up; this only drains the eventfd.
pub struct Waker {
    event: Arc<EventFd>,
}

impl Waker {
    pub fn new(event: Arc<EventFd>) -> Self {
        Waker { event }
    }
}

impl MutEventSubscriber for Waker {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.event.as_ref(), EventSet::IN)) {
            warn!("event loop: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.event.read();
    }
}
