//! Reading KVM's VM statistics (`crate::kvm_stats`): the descriptor is opened with the VM
//! (`KVM_GET_STATS_FD`, in the lifecycle list for API mode's `vm.boot`; a command-line VM opens
//! it before any filter), and read with `pread` by the API thread (`vm.counters`) and the main
//! thread (the exit log).

use super::{Allow, List};

pub const LIST: List = List {
    name: "KVM statistics",
    allow: &[Allow::any(libc::SYS_pread64)],
};
