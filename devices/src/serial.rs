//! COM1: a 16550A UART from vm-superio behind the port-I/O bus.
//!
//! The interrupt line is an eventfd that the monitor registers with KVM as an irqfd, so raising it
//! needs no trip through the monitor. Host input goes in through [`SerialPort::enqueue_input`];
//! when the guest has drained the receive FIFO the `input_ready` eventfd fires so the event loop
//! knows it may read more from the host side (until then it stops reading, rather than dropping).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::warn;
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::PioDevice;

/// The UART's interrupt output: one eventfd write per edge, counted and timed for the stop
/// report.
pub struct IrqLine {
    fd: EventFd,
    edges: AtomicU64,
    created: Instant,
    /// When the last edge was raised, in microseconds after `created`.
    last_edge_us: AtomicU64,
}

impl IrqLine {
    fn new(fd: EventFd) -> Self {
        IrqLine {
            fd,
            edges: AtomicU64::new(0),
            created: Instant::now(),
            last_edge_us: AtomicU64::new(0),
        }
    }
}

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        let us = u64::try_from(self.created.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_edge_us.store(us, Ordering::Relaxed);
        self.edges.fetch_add(1, Ordering::Relaxed);
        self.fd.write(1)
    }
}

// 16550 register bits the stop report reads (vm-superio keeps its own private copies).
/// IER: transmitter holding register empty interrupt enabled.
const IER_THRI: u8 = 0x02;
/// IIR: no interrupt pending.
const IIR_NO_INT: u8 = 0x01;
/// IIR: the transmitter holding register empty interrupt is pending.
const IIR_THRI: u8 = 0x02;

/// Console output the guest queued and never sent: it enabled the transmit interrupt, the UART
/// raised it (the interrupt is still pending, unread), and the guest never came to take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxStall {
    /// Interrupt edges the UART raised since the guest started.
    pub edges: u64,
    /// How long ago the last edge was raised: the guest ran that long without taking it.
    pub since_last_edge: Duration,
}

/// Signals the host side when the guest emptied the receive buffer.
pub struct InputReady(pub EventFd);

impl SerialEvents for InputReady {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // Wakes the event loop; a saturated counter still wakes it, so the error is harmless.
        let _ = self.0.write(1);
    }
}

pub type Output = Box<dyn Write + Send>;

pub struct SerialPort {
    uart: Serial<IrqLine, InputReady, Output>,
}

impl SerialPort {
    pub fn new(irq: EventFd, input_ready: EventFd, out: Output) -> Self {
        SerialPort {
            uart: Serial::with_events(IrqLine::new(irq), InputReady(input_ready), out),
        }
    }

    /// Whether the guest stopped while waiting for a transmit interrupt it never took (see
    /// [`TxStall`]). A driver that has sent everything masks the interrupt (Linux's 8250 does
    /// once its buffer is empty), so a guest that stops with it enabled and pending had output
    /// left that only that interrupt would have sent.
    pub fn tx_stall(&self) -> Option<TxStall> {
        let state = self.uart.state();
        let enabled = state.interrupt_enable & IER_THRI != 0;
        let pending = state.interrupt_identification & (IIR_NO_INT | IIR_THRI) == IIR_THRI;
        let line = self.uart.interrupt_evt();
        (enabled && pending).then(|| {
            let last = Duration::from_micros(line.last_edge_us.load(Ordering::Relaxed));
            TxStall {
                edges: line.edges.load(Ordering::Relaxed),
                since_last_edge: line.created.elapsed().saturating_sub(last),
            }
        })
    }

    /// Free room in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host bytes for the guest; returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                warn!("serial input: {e:?}");
                0
            }
        }
    }
}

impl PioDevice for SerialPort {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(offset), 1) => data[0] = self.uart.read(offset),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            // A lost output byte (say stdout closed) must not stop the guest.
            if let Err(e) = self.uart.write(offset, *value) {
                log::debug!("serial output: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_writer_and_input_raises_irq() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let ready = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = Shared::default();
        let mut port = SerialPort::new(
            irq.try_clone().unwrap(),
            ready.try_clone().unwrap(),
            Box::new(out.clone()),
        );
        port.write(0, b"h");
        port.write(0, b"i");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi");

        port.write(1, &[0x01]); // IER: received-data interrupt
        let _ = irq.read();
        assert_eq!(port.enqueue_input(b"ab"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0];
        port.read(0, &mut b);
        assert_eq!(b, [b'a']);
        port.read(0, &mut b);
        assert_eq!(b, [b'b']);
        assert_eq!(ready.read().unwrap(), 1, "drained FIFO signals input_ready");
        // Wide accesses are not UART accesses.
        let mut wide = [0u8; 2];
        port.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn tx_stall_is_an_enabled_transmit_interrupt_left_unread() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let ready = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut port = SerialPort::new(irq, ready, Box::new(Shared::default()));
        assert_eq!(port.tx_stall(), None, "a fresh UART");
        port.write(1, &[IER_THRI]); // the driver wants to send: the UART raises THRE
        std::thread::sleep(Duration::from_millis(20));
        let stall = port.tx_stall().expect("raised, not taken");
        assert_eq!(stall.edges, 1);
        assert!(
            stall.since_last_edge >= Duration::from_millis(20),
            "{stall:?}"
        );
        let mut iir = [0];
        port.read(2, &mut iir); // the driver's interrupt handler takes it
        assert_eq!(iir[0] & 0x0f, IIR_THRI);
        assert_eq!(port.tx_stall(), None, "taken");
        port.write(0, b"x"); // more output: THRE again, still enabled, not yet taken
        let stall = port.tx_stall().expect("raised again");
        assert_eq!(stall.edges, 2);
        assert!(
            stall.since_last_edge < Duration::from_millis(20),
            "{stall:?}"
        );
        port.write(1, &[0]); // everything sent: the driver masks THRE
        assert_eq!(port.tx_stall(), None, "masked");
    }
}
