//! Step 6 of a run: the KVM virtual machine — interrupt controllers, memory slots, vCPUs — put
//! together from guest memory that already holds the kernel, the boot structures and the ACPI
//! tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use devices::pmem::mapping::PmemMapping;
use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, KVM_CAP_X86_DISABLE_EXITS,
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY, KVM_X86_DISABLE_EXITS_HLT,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use log::warn;
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::boot::Entry;
use crate::cpu::{self, CpuError};
use crate::kvm_stats::{VcpuStats, VmStats};
use crate::layout;
use crate::pmem::{PmemDevice, PmemDevices};

#[derive(Debug, Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("--cpus {wanted}: this host's KVM supports at most {max} vCPUs per VM")]
    TooManyCpus { wanted: u32, max: usize },
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error(
        "--pmem readonly=on: this host's KVM has no read-only memory slots (KVM_CAP_READONLY_MEM)"
    )]
    NoReadonlySlots,
    #[error("KVM memory slot {slot} is already in use")]
    SlotInUse { slot: u32 },
    #[error("KVM memory slot {slot} does not exist")]
    NoSuchSlot { slot: u32 },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub struct Vm {
    pub fd: VmFd,
    pub vcpus: Vec<VcpuFd>,
    /// The mappings the pmem memory slots point into, by KVM slot number: an entry exists
    /// exactly while its slot does ([`Vm::remove_pmem_slot`] deletes the slot before it lets go
    /// of the mapping). Declared after `fd`, so a `Vm` dropped whole closes the VM (and with it
    /// every slot) before it lets go of them; code that moves `fd` out drops it first anyway.
    /// Either way no slot outlives its mapping.
    pub pmem_mappings: BTreeMap<u32, Arc<PmemMapping>>,
    /// Slot number of pmem device slot 0; a device in slot `i` ([`PmemDevice::slot`]) has KVM
    /// slot `first_pmem_slot + i`.
    pub first_pmem_slot: u32,
    /// KVM's statistics of this VM (stage-2 page sizes), when this KVM has them.
    pub stats: Option<Arc<VmStats>>,
    /// KVM's statistics of each vCPU (page faults), for `fault_watch`: with HLT exits (the
    /// default) only, and only when every vCPU has them.
    pub vcpu_stats: Vec<VcpuStats>,
}

impl Vm {
    /// Opens /dev/kvm and checks what only KVM can answer about the configuration: that it
    /// takes `cpus` vCPUs, and read-only memory slots when a device is `readonly=on`. Run before
    /// anything is written, so these refusals leave every backing as it was.
    pub fn probe(cpus: u32, readonly_slots: bool) -> Result<Kvm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let max = kvm.get_max_vcpus();
        if cpus as usize > max {
            return Err(VmError::TooManyCpus { wanted: cpus, max });
        }
        if readonly_slots && !kvm.check_extension(Cap::ReadonlyMem) {
            return Err(VmError::NoReadonlySlots);
        }
        Ok(kvm)
    }

    /// Creates the VM and its vCPUs on a KVM handle from [`Vm::probe`]; the boot vCPU starts at
    /// `entry`.
    pub fn create(
        kvm: &Kvm,
        mem: &GuestMemoryMmap,
        cpus: u32,
        entry: Entry,
        pmem: &PmemDevices,
        halt: HaltExits,
    ) -> Result<Vm, VmError> {
        // Declared before `fd`: locals drop in reverse order, so on an error return the VM (and
        // its slots) goes before the mappings it points into.
        let mut pmem_mappings: BTreeMap<u32, Arc<PmemMapping>> = BTreeMap::new();
        let fd = kvm.create_vm().map_err(kvm_err("create VM"))?;
        // What KVM counts about the VM is reported, not needed: a KVM without binary
        // statistics runs the guest all the same.
        let stats = match VmStats::open(&fd) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                log::warn!("{e}; stage-2 page sizes will not be reported");
                None
            }
        };
        fd.set_tss_address(layout::KVM_TSS_ADDR as usize)
            .map_err(kvm_err("set TSS address"))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("set identity map address"))?;
        if halt == HaltExits::InGuest {
            halt_in_guest(&fd);
        }
        // PIC + IOAPIC + local APICs in the kernel, and the PIT the kernel calibrates against.
        fd.create_irq_chip().map_err(kvm_err("create irqchip"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("create PIT"))?;

        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .expect("a region's start address is inside guest memory");
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range [host, host + len) is a mapping owned by `mem`, which the
            // caller keeps alive for as long as the VM exists (`run_with_pmem` owns both and drops
            // the VM fd before `mem`); slots do not overlap because guest memory regions do not.
            unsafe { fd.set_user_memory_region(desc) }.map_err(kvm_err("add RAM slot"))?;
        }

        let first_pmem_slot = mem.num_regions() as u32;
        for dev in &pmem.devices {
            let slot = first_pmem_slot + dev.slot as u32;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: if dev.config.readonly {
                    KVM_MEM_READONLY
                } else {
                    0
                },
                guest_phys_addr: dev.window.base,
                memory_size: dev.window.size,
                userspace_addr: dev.mapping.as_ptr() as u64,
            };
            // SAFETY: the mapping covers [as_ptr, as_ptr + window.size) (the window is the
            // backing's whole size) and stays mapped while the VM exists: the returned `Vm`
            // holds a reference to it in `pmem_mappings` (and on an error return `fd` is dropped
            // before `pmem_mappings`, see its declaration). Windows are placed above
            // RAM and do not overlap each other or RAM, so neither do the slots; device slots
            // are distinct (command-line positions), so are the slot numbers.
            unsafe { fd.set_user_memory_region(desc) }.map_err(kvm_err("add pmem slot"))?;
            pmem_mappings.insert(slot, Arc::clone(&dev.mapping));
        }

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let get_tsc_khz = kvm.check_extension(Cap::GetTscKhz);
        let mut vcpus = Vec::with_capacity(cpus as usize);
        let mut vcpu_stats = Vec::with_capacity(cpus as usize);
        let mut watch_faults = halt == HaltExits::ToHost;
        for id in 0..cpus {
            let vcpu = fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create vCPU"))?;
            // Every vCPU gets the TSC rate KVM set for the VM; 0 means unknown.
            let tsc_khz = if get_tsc_khz {
                vcpu.get_tsc_khz().ok().filter(|&khz| khz != 0)
            } else {
                None
            };
            let params = cpu::CpuidParams {
                id,
                count: cpus,
                tsc_deadline,
                tsc_khz,
                async_pf: halt == HaltExits::ToHost,
            };
            let cpuid = cpu::guest_cpuid(&supported, &params);
            cpu::configure_vcpu(&vcpu, id, &cpuid)?;
            if watch_faults {
                match VcpuStats::open(&vcpu) {
                    Ok(s) => vcpu_stats.push(s),
                    Err(e) => {
                        warn!(
                            "vCPU {id}: {e}; a backing failing under the guest may wedge it \
                             silently (--halt-in-guest avoids that)"
                        );
                        watch_faults = false;
                        vcpu_stats.clear();
                    }
                }
            }
            vcpus.push(vcpu);
        }
        cpu::set_boot_registers(&vcpus[0], entry)?;
        Ok(Vm {
            fd,
            vcpus,
            pmem_mappings,
            first_pmem_slot,
            stats,
            vcpu_stats,
        })
    }

    /// Adds the device's slot to the running VM (NVDIMM hot-add).
    pub fn add_pmem_slot(&mut self, dev: &PmemDevice) -> Result<(), VmError> {
        let slot = self.first_pmem_slot + dev.slot as u32;
        if self.pmem_mappings.contains_key(&slot) {
            return Err(VmError::SlotInUse { slot });
        }
        let desc = kvm_userspace_memory_region {
            slot,
            flags: if dev.config.readonly {
                KVM_MEM_READONLY
            } else {
                0
            },
            guest_phys_addr: dev.window.base,
            memory_size: dev.window.size,
            userspace_addr: dev.mapping.as_ptr() as u64,
        };
        // SAFETY: as in `create`: the mapping covers [as_ptr, as_ptr + window.size) and stays
        // mapped while the VM exists, because `self.pmem_mappings` takes a reference to it right
        // below (and `fd` is dropped before `pmem_mappings`). The window was placed above every
        // window in use and above RAM, so the new slot overlaps no other; the slot number is
        // free (checked above: `pmem_mappings` has an entry for every pmem slot that exists).
        unsafe { self.fd.set_user_memory_region(desc) }.map_err(kvm_err("add pmem slot"))?;
        self.pmem_mappings.insert(slot, Arc::clone(&dev.mapping));
        Ok(())
    }

    /// Deletes the device's slot from the running VM (NVDIMM hot-remove, once the guest has
    /// released the DIMM), then lets go of the VM's reference to its mapping. After an error
    /// the slot and the reference stay, so the mapping stays mapped.
    pub fn remove_pmem_slot(&mut self, dev: &PmemDevice) -> Result<(), VmError> {
        let slot = self.first_pmem_slot + dev.slot as u32;
        if !self.pmem_mappings.contains_key(&slot) {
            return Err(VmError::NoSuchSlot { slot });
        }
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: dev.window.base,
            memory_size: 0,
            userspace_addr: dev.mapping.as_ptr() as u64,
        };
        // SAFETY: a zero size deletes the slot (KVM_SET_USER_MEMORY_REGION); KVM reads no host
        // memory for that. Once the ioctl returns, no vCPU can reach the mapping through the
        // slot (KVM flushes the slot's translations before it returns), so dropping the
        // reference below cannot leave a slot pointing at unmapped memory.
        unsafe { self.fd.set_user_memory_region(desc) }.map_err(kvm_err("delete pmem slot"))?;
        self.pmem_mappings.remove(&slot);
        Ok(())
    }
}

/// Where a guest's HLT goes (`--halt-in-guest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltExits {
    /// The default: HLT exits to KVM, which sleeps the vCPU's thread until an interrupt.
    ToHost,
    /// HLT halts the CPU in guest mode: see [`halt_in_guest`].
    InGuest,
}

/// Lets the guest's HLT halt the CPU without an exit (`KVM_X86_DISABLE_EXITS_HLT`), before any
/// vCPU exists. Why: with HLT exits on, KVM answers a guest access to a backing page the host
/// cannot supply (a hole on a full file system, a block device's I/O error, a removed
/// device-dax) with an "asynchronous page fault": it halts the vCPU, retries the fault in a
/// worker, which fails silently, and lets the vCPU run into the same fault again, forever; the
/// guest is wedged and the monitor never hears of it. With HLT in the guest (and the guest's
/// own asynchronous page faults hidden, `cpu::guest_cpuid`), KVM faults the page in
/// synchronously and a failure comes back as `KVM_RUN` returning `EFAULT`, which the monitor
/// turns into a stop naming the backing (`PmemDevices::diagnose_fault`). The cost: a halted
/// vCPU stays in guest mode, so its thread looks busy to the host scheduler instead of sleeping.
/// A KVM without the capability keeps HLT exits, with a warning. With HLT exits (the default)
/// the monitor notices the endless retry from KVM's per-vCPU fault counts instead
/// (`fault_watch`), a few seconds late and without the faulting address.
fn halt_in_guest(fd: &VmFd) {
    let supported = fd.check_extension_raw(u64::from(KVM_CAP_X86_DISABLE_EXITS));
    if supported < 0 || supported as u32 & KVM_X86_DISABLE_EXITS_HLT == 0 {
        warn!(
            "this KVM cannot leave HLT to the guest (KVM_CAP_X86_DISABLE_EXITS): a backing \
             that fails under the guest will wedge its vCPU instead of stopping it"
        );
        return;
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_DISABLE_EXITS,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_X86_DISABLE_EXITS_HLT);
    if let Err(e) = fd.enable_cap(&cap) {
        warn!(
            "KVM refused to leave HLT to the guest ({e}): a backing that fails under the guest \
             will wedge its vCPU instead of stopping it"
        );
    }
}
