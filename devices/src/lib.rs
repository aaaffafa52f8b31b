//! Device models for the monitor. None of them sees a KVM file descriptor: they are driven through
//! the port-I/O bus in [`bus`] and report guest requests (power off, reset) through [`lifecycle`].

pub mod bus;
pub mod i8042;
pub mod lifecycle;
pub mod pmem;
pub mod power;
pub mod serial;
