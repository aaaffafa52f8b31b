//! The monitor's own SIGBUS on a backing's mapping: when the monitor itself touches a page the
//! host cannot supply (a device-dax removed under it, say; files and block devices are read and
//! written with `pread`/`pwrite`, so they cannot do this), the kernel sends SIGBUS, which would
//! kill the monitor without a word. The handler here names the device and the offset in one line
//! and exits with [`crate::exit::BACKING_FAULT`].
//!
//! A signal handler may only do async-signal-safe things: it reads a fixed table of atomics
//! (filled when a device is mapped, cleared when it goes), formats into a stack buffer, and calls
//! `write` and `_exit` (both in every seccomp list). A SIGBUS outside every mapping is a bug,
//! not a backing fault: the handler says so and aborts.

use std::io;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use geometry::MAX_PMEM_DEVICES;

/// One mapping the handler knows: `[start, end)` and the line's prefix (leaked, never freed, so
/// the handler can never read freed memory; one short string per device ever mapped).
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    prefix: AtomicPtr<u8>,
    prefix_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    prefix: AtomicPtr::new(std::ptr::null_mut()),
    prefix_len: AtomicUsize::new(0),
};

/// Every device can be hot-added up to the limit, and a removed one frees its slot.
static SLOTS: [Slot; MAX_PMEM_DEVICES] = [EMPTY; MAX_PMEM_DEVICES];

const SUFFIX: &[u8] = b" (SIGBUS): the host could not supply the page (a full file system, an I/O \
error or a removed device-dax); the monitor stopped\n";

/// A mapping known to the handler until dropped.
#[derive(Debug)]
pub struct Registration(Option<usize>);

/// Makes `[start, start + len)` known to the handler as device `id` at `path`. With every slot
/// in use (cannot happen below [`MAX_PMEM_DEVICES`] live devices) the mapping goes unnamed.
pub fn register(start: *const u8, len: usize, id: &str, path: &std::path::Path) -> Registration {
    let prefix: &'static [u8] = Box::leak(
        format!(
            "vmm: {id} ({}): the monitor's own access to the backing at offset ",
            path.display()
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    for (i, slot) in SLOTS.iter().enumerate() {
        if slot
            .start
            .compare_exchange(0, start as usize, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            slot.prefix
                .store(prefix.as_ptr() as *mut u8, Ordering::SeqCst);
            slot.prefix_len.store(prefix.len(), Ordering::SeqCst);
            slot.end.store(start as usize + len, Ordering::SeqCst);
            return Registration(Some(i));
        }
    }
    Registration(None)
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            SLOTS[i].end.store(0, Ordering::SeqCst);
            SLOTS[i].start.store(0, Ordering::SeqCst);
        }
    }
}

/// Installs the handler for the whole process.
pub fn install() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value of this plain C struct; the fields we use
    // are set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigbus as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a sigset_t owned by `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: installs a handler that only does async-signal-safe things (see the module
    // comment); `action` is fully initialised and the old action is not wanted.
    if unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; si_addr is the
    // faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS {
        let start = slot.start.load(Ordering::SeqCst);
        let end = slot.end.load(Ordering::SeqCst);
        if start == 0 || !(start..end).contains(&addr) {
            continue;
        }
        let prefix = slot.prefix.load(Ordering::SeqCst);
        let len = slot.prefix_len.load(Ordering::SeqCst);
        if !prefix.is_null() {
            // SAFETY: `prefix` and `len` describe a leaked, never freed byte string.
            write_stderr(unsafe { std::slice::from_raw_parts(prefix, len) });
        }
        let mut hex = [0u8; 18];
        write_stderr(format_hex(addr - start, &mut hex));
        write_stderr(SUFFIX);
        // SAFETY: _exit is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(i32::from(crate::exit::BACKING_FAULT)) };
    }
    write_stderr(b"vmm: SIGBUS outside every backing's mapping (a bug in the monitor)\n");
    // SAFETY: abort is async-signal-safe; it ends the process with SIGABRT (and a core dump).
    unsafe { libc::abort() };
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: write(2) from a valid buffer; its result does not matter on the way out.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// `0x` and the lowercase hex digits of `n`, in `buf`.
fn format_hex(mut n: usize, buf: &mut [u8; 18]) -> &[u8] {
    let mut digits = [0u8; 16];
    let mut i = 16;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let count = 16 - i;
    buf[0] = b'0';
    buf[1] = b'x';
    buf[2..2 + count].copy_from_slice(&digits[i..]);
    &buf[..2 + count]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;
    use std::process::Command;

    #[test]
    fn hex() {
        let mut b = [0u8; 18];
        assert_eq!(format_hex(0, &mut b), b"0x0");
        assert_eq!(format_hex(0x1f000, &mut b), b"0x1f000");
        assert_eq!(format_hex(usize::MAX, &mut b), b"0xffffffffffffffff");
    }

    /// Run by `sigbus_in_a_mapping_names_the_device_and_exits_6` in a child process: maps a
    /// file, truncates it and reads past its new end.
    #[test]
    #[ignore = "run as a child process by sigbus_in_a_mapping_names_the_device_and_exits_6"]
    fn sigbus_child() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.img");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(1 << 20).unwrap();
        // SAFETY: a fresh shared read-only mapping of an open file; unmapped at process exit.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let _reg = register(p.cast(), 1 << 20, "pmem3", &path);
        install().unwrap();
        f.set_len(4096).unwrap();
        // SAFETY: inside the mapping; past the file's end now, so the load raises SIGBUS.
        let v = unsafe { std::ptr::read_volatile(p.cast::<u8>().add(0x2000)) };
        panic!("no SIGBUS (read {v})");
    }

    #[test]
    fn sigbus_in_a_mapping_names_the_device_and_exits_6() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigbus::tests::sigbus_child",
                "--ignored",
                "--nocapture",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(i32::from(crate::exit::BACKING_FAULT)),
            "{stderr}"
        );
        let line = stderr
            .lines()
            .find(|l| l.starts_with("vmm: pmem3 ("))
            .unwrap_or_else(|| panic!("no line naming pmem3 in {stderr:?}"));
        assert!(
            line.contains(
                "b.img): the monitor's own access to the backing at offset 0x2000 (SIGBUS)"
            ),
            "{line}"
        );
    }
}
