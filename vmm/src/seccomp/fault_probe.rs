//! The main thread after a vCPU reported that KVM could not map guest memory: asking each
//! backing what is wrong with it (`devices::pmem::fault`), with calls that change nothing:
//! the file's size and blocks, its file system's free space, which pages are resident, reads of
//! the others, and a look at the device-dax's `driver` link in its sysfs directory (opened with
//! the device, so no `open` here).

use super::{Allow, List};

pub const LIST: List = List {
    name: "fault probe",
    allow: &[
        Allow::any(libc::SYS_fstat),
        Allow::any(libc::SYS_statx),
        Allow::any(libc::SYS_newfstatat),
        Allow::any(libc::SYS_fstatfs),
        Allow::any(libc::SYS_mincore),
        Allow::any(libc::SYS_pread64),
    ],
};
