//! The ioctl request numbers the allow lists name, each with the `_IO*` definition it comes from
//! (include/uapi/linux/kvm.h, include/uapi/asm-generic/ioctls.h, include/uapi/linux/fs.h). A
//! filter compares the request (the ioctl's second argument) with these, so a thread may only
//! make the requests its list names, on whatever descriptor.

// Terminal (asm-generic/ioctls.h).
/// Reading a terminal's attributes: `isatty` (the logger asks it of stderr) and raw mode.
pub const TCGETS: u64 = 0x5401;
/// Restoring the terminal on the way out (`tcsetattr(TCSANOW)`).
pub const TCSETS: u64 = 0x5402;

// Block devices (linux/fs.h): sizing and checking a `/dev/pmemN` or other block backing.
/// `_IO(0x12, 94)`
pub const BLKROGET: u64 = 0x125e;
/// `_IOR(0x12, 114, size_t)`
pub const BLKGETSIZE64: u64 = 0x8008_1272;

// /dev/kvm (system ioctls).

/// `_IO(KVMIO, 0x01)`
pub const KVM_CREATE_VM: u64 = 0xae01;
/// `_IO(KVMIO, 0x03)`
pub const KVM_CHECK_EXTENSION: u64 = 0xae03;
/// `_IO(KVMIO, 0x04)`
pub const KVM_GET_VCPU_MMAP_SIZE: u64 = 0xae04;
/// `_IOWR(KVMIO, 0x05, struct kvm_cpuid2)`
pub const KVM_GET_SUPPORTED_CPUID: u64 = 0xc008_ae05;

// VM ioctls.
/// `_IO(KVMIO, 0x41)`
pub const KVM_CREATE_VCPU: u64 = 0xae41;
/// `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)`
pub const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;
/// `_IO(KVMIO, 0x47)`
pub const KVM_SET_TSS_ADDR: u64 = 0xae47;
/// `_IOW(KVMIO, 0x48, __u64)`
pub const KVM_SET_IDENTITY_MAP_ADDR: u64 = 0x4008_ae48;
/// `_IO(KVMIO, 0x60)`
pub const KVM_CREATE_IRQCHIP: u64 = 0xae60;
/// `_IOW(KVMIO, 0x76, struct kvm_irqfd)`
pub const KVM_IRQFD: u64 = 0x4020_ae76;
/// `_IOW(KVMIO, 0x77, struct kvm_pit_config)`
pub const KVM_CREATE_PIT2: u64 = 0x4040_ae77;
/// `_IOWR(KVMIO, 0x62, struct kvm_irqchip)`
pub const KVM_GET_IRQCHIP: u64 = 0xc208_ae62;
/// `_IO(KVMIO, 0xce)`: the VM's binary statistics (`crate::kvm_stats`).
pub const KVM_GET_STATS_FD: u64 = 0xaece;

// vCPU ioctls.
/// `_IO(KVMIO, 0x80)`
pub const KVM_RUN: u64 = 0xae80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`
pub const KVM_GET_REGS: u64 = 0x8090_ae81;
/// `_IOW(KVMIO, 0x82, struct kvm_regs)`
pub const KVM_SET_REGS: u64 = 0x4090_ae82;
/// `_IOR(KVMIO, 0x83, struct kvm_sregs)`
pub const KVM_GET_SREGS: u64 = 0x8138_ae83;
/// `_IOW(KVMIO, 0x84, struct kvm_sregs)`
pub const KVM_SET_SREGS: u64 = 0x4138_ae84;
/// `_IOW(KVMIO, 0x89, struct kvm_msrs)`
pub const KVM_SET_MSRS: u64 = 0x4008_ae89;
/// `_IOR(KVMIO, 0x8e, struct kvm_lapic_state)`
pub const KVM_GET_LAPIC: u64 = 0x8400_ae8e;
/// `_IOW(KVMIO, 0x8f, struct kvm_lapic_state)`
pub const KVM_SET_LAPIC: u64 = 0x4400_ae8f;
/// `_IOW(KVMIO, 0x8d, struct kvm_fpu)`
pub const KVM_SET_FPU: u64 = 0x41a0_ae8d;
/// `_IOW(KVMIO, 0x90, struct kvm_cpuid2)`
pub const KVM_SET_CPUID2: u64 = 0x4008_ae90;
/// `_IO(KVMIO, 0xa3)`
pub const KVM_GET_TSC_KHZ: u64 = 0xaea3;
/// `_IOW(KVMIO, 0xa7, struct kvm_xcrs)`
pub const KVM_SET_XCRS: u64 = 0x4188_aea7;

#[cfg(test)]
mod tests {
    use super::*;

    // The encodings of asm-generic/ioctl.h, to check the numbers above against their
    // definitions with the kernel's own struct sizes.
    const fn io(ty: u64, nr: u64) -> u64 {
        (ty << 8) | nr
    }
    const fn iow(ty: u64, nr: u64, size: usize) -> u64 {
        (1 << 30) | ((size as u64) << 16) | (ty << 8) | nr
    }
    const fn ior(ty: u64, nr: u64, size: usize) -> u64 {
        (2 << 30) | ((size as u64) << 16) | (ty << 8) | nr
    }
    const KVMIO: u64 = 0xae;

    #[test]
    fn numbers_match_their_definitions() {
        use kvm_bindings::{
            kvm_cpuid2, kvm_fpu, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_msrs, kvm_pit_config,
            kvm_regs, kvm_sregs, kvm_userspace_memory_region, kvm_xcrs,
        };
        use std::mem::size_of;
        assert_eq!(BLKROGET, io(0x12, 94));
        assert_eq!(BLKGETSIZE64, ior(0x12, 114, size_of::<usize>()));
        assert_eq!(KVM_CREATE_VM, io(KVMIO, 0x01));
        assert_eq!(
            KVM_GET_SUPPORTED_CPUID,
            iow(KVMIO, 0x05, size_of::<kvm_cpuid2>()) | ior(KVMIO, 0x05, size_of::<kvm_cpuid2>())
        );
        assert_eq!(
            KVM_SET_USER_MEMORY_REGION,
            iow(KVMIO, 0x46, size_of::<kvm_userspace_memory_region>())
        );
        assert_eq!(
            KVM_SET_IDENTITY_MAP_ADDR,
            iow(KVMIO, 0x48, size_of::<u64>())
        );
        assert_eq!(KVM_IRQFD, iow(KVMIO, 0x76, size_of::<kvm_irqfd>()));
        assert_eq!(
            KVM_CREATE_PIT2,
            iow(KVMIO, 0x77, size_of::<kvm_pit_config>())
        );
        assert_eq!(
            KVM_GET_IRQCHIP,
            iow(KVMIO, 0x62, size_of::<kvm_irqchip>()) | ior(KVMIO, 0x62, size_of::<kvm_irqchip>())
        );
        assert_eq!(KVM_GET_STATS_FD, io(KVMIO, 0xce));
        assert_eq!(KVM_RUN, io(KVMIO, 0x80));
        assert_eq!(KVM_GET_REGS, ior(KVMIO, 0x81, size_of::<kvm_regs>()));
        assert_eq!(KVM_SET_REGS, iow(KVMIO, 0x82, size_of::<kvm_regs>()));
        assert_eq!(KVM_GET_SREGS, ior(KVMIO, 0x83, size_of::<kvm_sregs>()));
        assert_eq!(KVM_SET_SREGS, iow(KVMIO, 0x84, size_of::<kvm_sregs>()));
        assert_eq!(KVM_SET_MSRS, iow(KVMIO, 0x89, size_of::<kvm_msrs>()));
        assert_eq!(KVM_SET_FPU, iow(KVMIO, 0x8d, size_of::<kvm_fpu>()));
        assert_eq!(
            KVM_GET_LAPIC,
            ior(KVMIO, 0x8e, size_of::<kvm_lapic_state>())
        );
        assert_eq!(
            KVM_SET_LAPIC,
            iow(KVMIO, 0x8f, size_of::<kvm_lapic_state>())
        );
        assert_eq!(KVM_SET_CPUID2, iow(KVMIO, 0x90, size_of::<kvm_cpuid2>()));
        assert_eq!(KVM_GET_TSC_KHZ, io(KVMIO, 0xa3));
        assert_eq!(KVM_SET_XCRS, iow(KVMIO, 0xa7, size_of::<kvm_xcrs>()));
    }
}
