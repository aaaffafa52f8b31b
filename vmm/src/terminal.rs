//! Raw mode for an interactive console: keystrokes go to the guest as typed (the guest's own
//! line discipline echoes and edits), and the host terminal is restored however the monitor ends.

use std::io;

pub struct RawTerminal {
    fd: libc::c_int,
    saved: libc::termios,
}

impl RawTerminal {
    /// Puts `fd` in raw mode when it is a terminal; None when it is not.
    pub fn enter(fd: libc::c_int) -> io::Result<Option<RawTerminal>> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain old data; all-zero is a valid value to be overwritten.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to fill for a descriptor we just checked.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing off but let the terminal still turn Ctrl-C into nothing
        // special: in raw mode every key belongs to the guest, as with QEMU's -nographic.
        // SAFETY: `raw` is a fully initialised termios for the same descriptor.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(RawTerminal { fd, saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read from this descriptor in `enter`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
