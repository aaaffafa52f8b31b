//! `vm.add-pmem` on the main thread of a running guest (`HotAddContext::add`), all the checks
//! and the commit of a command-line `--pmem`: resolve and identify the path (`statx`,
//! `readlink`, sysfs for loop devices, partitions and device-dax), open or create (`size=`) and
//! `flock` the backing, size it (`BLKGETSIZE64`, `BLKROGET` for a block device), read and write
//! its info block (`pread`/`pwrite`, `lseek` for holes, `fsync`/`fdatasync`, a UUID from
//! `/dev/urandom`), map it, add the KVM memory slot; then write the FIT and raise the GED's
//! interrupt (eventfd writes: common). A failed add removes the file it created (`unlink`),
//! which is also how the API socket goes at exit. `vm.remove-device` (`hot_remove`) needs
//! nothing more: it deletes the KVM slot (the same ioctl with size 0), `msync`s the mapping,
//! and unmaps and closes the backing (`munmap`, `close`: common).

use super::ioctls::{BLKGETSIZE64, BLKROGET, KVM_SET_USER_MEMORY_REGION};
use super::{Allow, List};

pub const LIST: List = List {
    name: "hot-add",
    allow: &[
        Allow::any(libc::SYS_openat),
        Allow::any(libc::SYS_read),
        Allow::any(libc::SYS_pread64),
        Allow::any(libc::SYS_pwrite64),
        Allow::any(libc::SYS_lseek),
        Allow::any(libc::SYS_fsync),
        Allow::any(libc::SYS_fdatasync),
        Allow::any(libc::SYS_msync),
        Allow::any(libc::SYS_ftruncate),
        Allow::any(libc::SYS_flock),
        // backing::clear_nonblock (F_GETFL/F_SETFL).
        Allow::any(libc::SYS_fcntl),
        // Metadata: std uses statx and falls back to the stat family where statx is refused;
        // realpath (fs::canonicalize) reads links and, for a relative path, the directory.
        Allow::any(libc::SYS_statx),
        Allow::any(libc::SYS_newfstatat),
        Allow::any(libc::SYS_fstat),
        Allow::any(libc::SYS_readlink),
        Allow::any(libc::SYS_readlinkat),
        Allow::any(libc::SYS_getcwd),
        // output::may_create_at: may a new file be created in this directory.
        Allow::any(libc::SYS_faccessat),
        Allow::any(libc::SYS_faccessat2),
        Allow::any(libc::SYS_unlink),
        Allow::any(libc::SYS_unlinkat),
        Allow::ioctl(&[KVM_SET_USER_MEMORY_REGION, BLKGETSIZE64, BLKROGET]),
    ],
};
