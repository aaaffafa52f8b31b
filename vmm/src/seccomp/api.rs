//! The API thread (`crate::api::server`): accepts connections on the already bound and listening
//! socket, reads one bounded request and writes the answer with timeouts, hands commands to the
//! main thread (a channel and an eventfd write) and presses the power button (an eventfd write).
//! It opens nothing: `vm.create`'s and `vm.add-pmem`'s files are opened by the main thread.

use super::{Allow, List};

/// `setsockopt` options the thread sets (asm-generic/socket.h): its read and write timeouts.
const SO_RCVTIMEO: u64 = 20;
const SO_SNDTIMEO: u64 = 21;

pub const LIST: List = List {
    name: "API",
    allow: &[
        Allow::any(libc::SYS_accept4),
        // UnixStream's read and write are recvfrom and sendto (MSG_NOSIGNAL).
        Allow::any(libc::SYS_recvfrom),
        Allow::any(libc::SYS_sendto),
        Allow::only(libc::SYS_setsockopt, 2, &[SO_RCVTIMEO, SO_SNDTIMEO]),
        // After refusing a request it did not read: stop writing, drain what the client sends.
        Allow::any(libc::SYS_shutdown),
    ],
};
