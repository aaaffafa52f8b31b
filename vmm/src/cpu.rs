//! The architectural state a vCPU starts in: CPUID, MSRs, registers, FPU, local APIC, and the
//! GDT and identity page tables that the 64-bit entry needs in guest memory.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
    kvm_xcrs, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use log::warn;
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use crate::boot::{self, Entry};
use crate::layout;

#[derive(Debug, Error)]
pub enum CpuError {
    #[error("vCPU {id}: {what}: {source}")]
    Kvm {
        id: u32,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM accepted {set} of {wanted} boot MSRs")]
    Msrs { id: u32, set: usize, wanted: usize },
}

// GDT layout shared by both entry protocols.
const GDT: [u64; 5] = [
    0,                     // null
    0x00af_9b00_0000_ffff, // 0x08: 64-bit code
    0x00cf_9300_0000_ffff, // 0x10: flat data
    0x008f_8b00_0000_ffff, // 0x18: TSS
    0x00cf_9b00_0000_ffff, // 0x20: 32-bit flat code (PVH)
];
const CODE64: u16 = 1;
const DATA: u16 = 2;
const TSS: u16 = 3;
const CODE32: u16 = 4;

/// Decodes GDT entry `index` into the form KVM wants for a segment register.
fn segment(index: u16) -> kvm_segment {
    let e = GDT[index as usize];
    let base = ((e >> 16) & 0xff_ffff) | (((e >> 56) & 0xff) << 24);
    let raw_limit = ((e & 0xffff) | (((e >> 48) & 0xf) << 16)) as u32;
    let g = ((e >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With the granularity bit the limit counts 4 KiB pages.
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT and the identity map of the first 4 GiB (2 MiB pages) into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), boot::BootError> {
    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    boot::write_bytes(mem, layout::GDT_ADDR, &gdt)?;

    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    boot::write_bytes(
        mem,
        layout::PML4_ADDR,
        &(layout::PDPT_ADDR | PRESENT_RW).to_le_bytes(),
    )?;
    for gib in 0..layout::IDENTITY_MAPPED_GIB {
        let pd = layout::PD_ADDR + gib * layout::PAGE_SIZE;
        boot::write_bytes(
            mem,
            layout::PDPT_ADDR + gib * 8,
            &(pd | PRESENT_RW).to_le_bytes(),
        )?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((gib << 30) + (i << 21)) | PRESENT_RW | HUGE).to_le_bytes())
            .collect();
        boot::write_bytes(mem, pd, &entries)?;
    }
    Ok(())
}

/// What [`guest_cpuid`] needs to know about the VM besides KVM's supported CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidParams {
    /// This vCPU's APIC id (its index).
    pub id: u32,
    /// vCPUs in the VM.
    pub count: u32,
    /// KVM emulates the TSC deadline timer (`KVM_CAP_TSC_DEADLINE_TIMER`).
    pub tsc_deadline: bool,
    /// The vCPU's TSC frequency (`KVM_GET_TSC_KHZ`), for the hypervisor timing leaf.
    pub tsc_khz: Option<u32>,
    /// Offer KVM's asynchronous page faults; off with HLT in the guest (`vm::halt_in_guest`).
    pub async_pf: bool,
}

/// XCR0 bits (state components, SDM vol. 1, 13.1).
const XCR0_X87: u64 = 1 << 0;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_YMM: u64 = 1 << 2;
const XCR0_BNDREGS: u64 = 1 << 3;
const XCR0_BNDCSR: u64 = 1 << 4;
const XCR0_AVX512: u64 = (1 << 5) | (1 << 6) | (1 << 7);
const XCR0_PKRU: u64 = 1 << 9;
const XCR0_XTILE: u64 = (1 << 17) | (1 << 18);
/// The components a guest of this monitor may enable: AMX tile state is left out (its
/// 8 KiB per thread needs the monitor to ask the host for permission, as cloud-hypervisor's
/// `features=amx` does), and so is MPX (removed from Linux) and everything newer we do not know.
const XCR0_ALLOWED: u64 = XCR0_X87 | XCR0_SSE | XCR0_YMM | XCR0_AVX512 | XCR0_PKRU;
/// The legacy region plus the XSAVE header: where the extended components start.
const XSAVE_LEGACY_AND_HEADER: u32 = 512 + 64;

/// CPUID feature bits the normalisation touches.
const LEAF1_ECX_MONITOR: u32 = 1 << 3;
const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_PDCM: u32 = 1 << 15;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_AVX: u32 = 1 << 28;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const LEAF7_EBX_MPX: u32 = 1 << 14;
/// AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL.
const LEAF7_EBX_AVX512: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
/// AVX2 needs YMM state too.
const LEAF7_EBX_AVX2: u32 = 1 << 5;
/// AVX-512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ.
const LEAF7_ECX_AVX512: u32 = (1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14);
const LEAF7_ECX_PKU: u32 = 1 << 3;
const LEAF7_ECX_OSPKE: u32 = 1 << 4;
/// AVX512_4VNNIW, AVX512_4FMAPS, AVX512_VP2INTERSECT, AVX512_FP16.
const LEAF7_EDX_AVX512: u32 = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23);
/// AMX-BF16, AMX-TILE, AMX-INT8.
const LEAF7_EDX_AMX: u32 = (1 << 22) | (1 << 24) | (1 << 25);
const LEAF6_EAX_ARAT: u32 = 1 << 2;
const EXT1_ECX_SVM: u32 = 1 << 2;

/// The hypervisor timing leaf (VMware's convention, which Linux and others read): EAX the TSC
/// frequency in kHz, EBX the local APIC timer frequency in kHz (KVM's APIC bus runs at 1 GHz).
pub const CPUID_TSC_LEAF: u32 = 0x4000_0010;
/// KVM's paravirtual features in CPUID 0x4000_0001 EAX that make up asynchronous page faults:
/// `KVM_FEATURE_ASYNC_PF` (4), `KVM_FEATURE_ASYNC_PF_VMEXIT` (10), `KVM_FEATURE_ASYNC_PF_INT` (14).
pub const KVM_FEATURES_ASYNC_PF: u32 = (1 << 4) | (1 << 10) | (1 << 14);
const KVM_APIC_BUS_KHZ: u32 = 1_000_000;

fn is_intel(cpuid: &CpuId) -> bool {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| (e.ebx, e.edx, e.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e))
}

/// The XCR0 components the guest may enable: those KVM supports (leaf 0xD.0 EDX:EAX), that
/// this monitor allows, and whose size and offset leaf 0xD describes; x87 and SSE always.
fn guest_xcr0(cpuid: &CpuId) -> u64 {
    let entries = cpuid.as_slice();
    let Some(d0) = entries.iter().find(|e| e.function == 0xd && e.index == 0) else {
        return 0;
    };
    let supported = (u64::from(d0.edx) << 32) | u64::from(d0.eax);
    let described = |bit: u32| {
        entries
            .iter()
            .any(|e| e.function == 0xd && e.index == bit && e.eax != 0)
    };
    let mut xcr0 = supported & XCR0_ALLOWED;
    for bit in 2..64 {
        if xcr0 & (1 << bit) != 0 && !described(bit) {
            xcr0 &= !(1 << bit);
        }
    }
    // AVX-512 is all three components or none; YMM is a prerequisite of it.
    if xcr0 & XCR0_AVX512 != XCR0_AVX512 || xcr0 & XCR0_YMM == 0 {
        xcr0 &= !XCR0_AVX512;
    }
    xcr0 | XCR0_X87 | XCR0_SSE
}

/// The size of the standard-format XSAVE area holding the components in `xcr0`: the end of the
/// last one, from leaf 0xD's offsets.
fn xsave_size(cpuid: &CpuId, xcr0: u64) -> u32 {
    cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function == 0xd && (2..64).contains(&e.index) && xcr0 & (1 << e.index) != 0)
        .map(|e| e.ebx + e.eax)
        .fold(XSAVE_LEGACY_AND_HEADER, u32::max)
}

/// The size of the compacted-format area (XSAVEC/XSAVES) for `xcr0`: components packed in
/// order, each aligned to 64 bytes when leaf 0xD.i ECX bit 1 says so.
fn xsave_compacted_size(cpuid: &CpuId, xcr0: u64) -> u32 {
    let mut size = XSAVE_LEGACY_AND_HEADER;
    for bit in 2..64 {
        if xcr0 & (1 << bit) == 0 {
            continue;
        }
        if let Some(e) = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0xd && e.index == bit)
        {
            if e.ecx & 2 != 0 {
                size = size.next_multiple_of(64);
            }
            size += e.eax;
        }
    }
    size
}

/// KVM's supported CPUID normalised for vCPU `params.id` of `params.count`, as cloud-hypervisor
/// and Firecracker do:
///
/// - APIC ids and topology (one thread per core, all cores in one package) in leaves 0x1, 0x4,
///   0xB, 0x1F, 0x8000_0008 and 0x8000_001E;
/// - the hypervisor bit, the TSC deadline timer when KVM emulates it, no VMX/SVM (so the guest
///   does not try to run KVM itself), no MONITOR/MWAIT, no PDCM; leaf 0x6 reduced to ARAT;
/// - leaf 0xD describing exactly the XSAVE components the guest may enable
///   ([`XCR0_ALLOWED`] that KVM supports), with the sizes for those components, no supervisor
///   states, and every feature bit whose state is not offered cleared (AVX, AVX-512, PKU, AMX,
///   MPX), so the guest's XSAVE layout checks agree with what it sees;
/// - the hypervisor leaves: KVM's signature and kvm-clock features kept, and the timing leaf
///   [`CPUID_TSC_LEAF`] added when the TSC frequency is known.
pub fn guest_cpuid(supported: &CpuId, params: &CpuidParams) -> CpuId {
    let CpuidParams {
        id,
        count,
        tsc_deadline,
        tsc_khz,
        async_pf,
    } = *params;
    let intel = is_intel(supported);
    let xcr0 = guest_xcr0(supported);
    let xsave_bytes = xsave_size(supported, xcr0);
    let xsave_compacted_bytes = xsave_compacted_size(supported, xcr0);
    let has = |mask: u64| xcr0 & mask == mask;
    let mut cpuid = supported.clone();
    // Bits needed to number `count` cores in the x2APIC id.
    let core_bits = 32 - (count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0xffff) | (count.min(255) << 16) | (id << 24);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                e.ecx &= !(LEAF1_ECX_VMX | LEAF1_ECX_MONITOR | LEAF1_ECX_PDCM);
                if tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                if !has(XCR0_YMM) {
                    e.ecx &= !LEAF1_ECX_AVX;
                }
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT; // ebx[23:16] is meaningful
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Intel's deterministic cache parameters: cores per package in EAX[31:26], logical
            // processors sharing the cache in EAX[25:14] (L1 and L2 per core, L3 per package).
            0x4 if intel => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count.max(1) - 1 } else { 0 };
                let cores = (count.max(1) - 1).min(63);
                e.eax = (e.eax & 0x3fff) | (sharing.min(0xfff) << 14) | (cores << 26);
            }
            // Thermal and power management: only the always-running APIC timer means anything
            // in a VM (no turbo, no HWP, no energy-performance bias).
            0x6 => {
                e.eax &= LEAF6_EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x7 if e.index == 0 => {
                if !has(XCR0_YMM) {
                    e.ebx &= !LEAF7_EBX_AVX2;
                }
                if !has(XCR0_AVX512) {
                    e.ebx &= !LEAF7_EBX_AVX512;
                    e.ecx &= !LEAF7_ECX_AVX512;
                    e.edx &= !LEAF7_EDX_AVX512;
                }
                if !has(XCR0_PKRU) {
                    e.ecx &= !(LEAF7_ECX_PKU | LEAF7_ECX_OSPKE);
                }
                if !has(XCR0_BNDREGS | XCR0_BNDCSR) {
                    e.ebx &= !LEAF7_EBX_MPX;
                }
                if !has(XCR0_XTILE) {
                    e.edx &= !LEAF7_EDX_AMX;
                }
            }
            0xb | 0x1f => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8; // level 0: SMT
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1; // level 1: core
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
            }
            0xd => match e.index {
                0 => {
                    e.eax = xcr0 as u32;
                    e.edx = (xcr0 >> 32) as u32;
                    // Both the size for XCR0 as enabled (KVM updates this one when the guest
                    // writes XCR0) and the maximum start as the size for every component.
                    e.ebx = xsave_bytes;
                    e.ecx = xsave_bytes;
                }
                1 => {
                    // No supervisor states (IA32_XSS stays 0), so the compacted size covers
                    // the user components only.
                    e.ebx = xsave_compacted_bytes;
                    e.ecx = 0;
                    e.edx = 0;
                }
                i if i < 64 && xcr0 & (1 << i) != 0 => {}
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
            },
            // AMX tile information and TMUL leaves: gone with the tile state.
            0x1d | 0x1e if !has(XCR0_XTILE) => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x4000_0000 if tsc_khz.is_some() => {
                e.eax = e.eax.max(CPUID_TSC_LEAF);
            }
            // With HLT in the guest, no asynchronous page faults for it: with them KVM may retry
            // a fault on a failing backing forever instead of reporting it (`vm::halt_in_guest`).
            0x4000_0001 if !async_pf => {
                e.eax &= !KVM_FEATURES_ASYNC_PF;
            }
            0x8000_0001 => {
                e.ecx &= !EXT1_ECX_SVM;
            }
            // AMD: cores per package in ECX[7:0], APIC id bits for the core in ECX[15:12].
            0x8000_0008 if !intel => {
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (count.max(1) - 1).min(255);
            }
            // AMD extended APIC id, compute unit (one thread per unit), node 0.
            0x8000_001e if !intel => {
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
    if let Some(khz) = tsc_khz {
        let leaf = kvm_cpuid_entry2 {
            function: CPUID_TSC_LEAF,
            eax: khz,
            ebx: KVM_APIC_BUS_KHZ,
            ..Default::default()
        };
        let has_hypervisor_leaves = cpuid.as_slice().iter().any(|e| e.function == 0x4000_0000);
        let existing = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == CPUID_TSC_LEAF);
        if let Some(e) = existing {
            *e = leaf;
        } else if has_hypervisor_leaves && cpuid.push(leaf).is_err() {
            // Without KVM's signature leaf nobody looks for a timing leaf; a full list (KVM
            // returned KVM_MAX_CPUID_ENTRIES) cannot take one more, so it goes without.
            warn!("CPUID list full: the guest gets no TSC frequency leaf");
        }
    }
    cpuid
}

/// MSR values a freshly reset CPU would have that the kernel relies on at entry.
fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
    [
        (0x174, 0),              // IA32_SYSENTER_CS
        (0x175, 0),              // IA32_SYSENTER_ESP
        (0x176, 0),              // IA32_SYSENTER_EIP
        (0xc000_0081, 0),        // STAR
        (0xc000_0082, 0),        // LSTAR
        (0xc000_0083, 0),        // CSTAR
        (0xc000_0084, 0),        // SYSCALL_MASK
        (0xc000_0102, 0),        // KERNEL_GS_BASE
        (0x10, 0),               // TSC
        (0x1a0, 1),              // IA32_MISC_ENABLE: fast strings
        (0x2ff, MTRR_ENABLE_WB), // MTRR default type: enabled, write-back
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

fn kvm_err(id: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { id, what, source }
}

/// Local APIC register offsets and LVT delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// The 32-bit local APIC register at byte offset `off` of KVM's register page.
pub(crate) fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b: Vec<u8> = l.regs[off..off + 4].iter().map(|&c| c as u8).collect();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// The XCR0 a vCPU starts with: every component leaf 0xD of `cpuid` (a [`guest_cpuid`]
/// result) offers, or None when leaf 1 has no XSAVE.
///
/// A reset CPU has XCR0 = 1 and the guest kernel sets its own. But KVM sizes leaf 0xD.0 EBX
/// from the XCR0 it last saw, and under nested virtualization the guest's XSETBV does not
/// always reach it (QEMU's TCG does not intercept XSETBV for an SVM guest), leaving EBX at the
/// x87-only 576 bytes while the kernel enables AVX: `XSAVE consistency problem`. Starting with
/// the XCR0 the kernel will choose keeps KVM's EBX and the guest's XCR0 in agreement.
pub fn initial_xcr0(cpuid: &CpuId) -> Option<u64> {
    let entries = cpuid.as_slice();
    let leaf1 = entries.iter().find(|e| e.function == 1)?;
    if leaf1.ecx & LEAF1_ECX_XSAVE == 0 {
        return None;
    }
    let d0 = entries.iter().find(|e| e.function == 0xd && e.index == 0)?;
    Some(((u64::from(d0.edx) << 32) | u64::from(d0.eax)) | XCR0_X87 | XCR0_SSE)
}

/// Sets up everything but the boot registers; applies to every vCPU.
pub fn configure_vcpu(vcpu: &VcpuFd, id: u32, cpuid: &CpuId) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid).map_err(kvm_err(id, "set CPUID"))?;
    if let Some(xcr0) = initial_xcr0(cpuid) {
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = xcr0;
        vcpu.set_xcrs(&xcrs).map_err(kvm_err(id, "set XCR0"))?;
    }
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).expect("boot MSR list fits a kvm_msrs");
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err(id, "set MSRs"))?;
    if set != entries.len() {
        return Err(CpuError::Msrs {
            id,
            set,
            wanted: entries.len(),
        });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err(id, "set FPU"))?;
    // LINT0 receives the 8259's ExtINT, LINT1 the NMI line, as on a PC.
    let mut lapic = vcpu.get_lapic().map_err(kvm_err(id, "get LAPIC"))?;
    let lvt0 = lapic_reg(&lapic, APIC_LVT0);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(kvm_err(id, "set LAPIC"))?;
    Ok(())
}

/// Puts the boot vCPU at the kernel's entry point. Application processors wait for INIT/SIPI
/// from the guest, as KVM's in-kernel local APIC arranges.
pub fn set_boot_registers(vcpu: &VcpuFd, entry: Entry) -> Result<(), CpuError> {
    let id = 0;
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm_err(id, "get sregs"))?;
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let data = segment(DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS);

    const CR0_PE: u64 = 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;

    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        Entry::Linux64 { rip, zero_page } => {
            sregs.cs = segment(CODE64);
            sregs.cr3 = layout::PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsi = zero_page;
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
        }
        Entry::Pvh { rip, start_info } => {
            sregs.cs = segment(CODE32);
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = start_info;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm_err(id, "set sregs"))?;
    vcpu.set_regs(&regs).map_err(kvm_err(id, "set registers"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode() {
        let cs = segment(CODE64);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        let cs32 = segment(CODE32);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let tss = segment(TSS);
        assert_eq!((tss.s, tss.type_, tss.selector), (0, 0xb, 0x18));
    }

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn params(id: u32, count: u32) -> CpuidParams {
        CpuidParams {
            id,
            count,
            tsc_deadline: true,
            tsc_khz: None,
            async_pf: true,
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    /// What an AMD host's KVM might report: AVX, AVX-512, PKRU and AMX tile state supported
    /// (with leaf 0xD sizes and offsets as on real parts), XSAVES with a supervisor state, SVM,
    /// turbo in leaf 6, and KVM's hypervisor leaves.
    fn synthetic_amd() -> CpuId {
        let amd = (0x6874_7541, 0x444d_4163, 0x6974_6e65); // "AuthenticAMD": ebx, ecx, edx
        let xcr0: u64 = 0x7 | XCR0_AVX512 | XCR0_PKRU | XCR0_XTILE;
        CpuId::from_entries(&[
            leaf(0, 0, 0x1f, amd.0, amd.1, amd.2),
            leaf(
                1,
                0,
                0,
                0xffff_ffff,
                (1 << 28) | (1 << 26) | LEAF1_ECX_VMX,
                0,
            ),
            leaf(6, 0, 0x7, 0x1, 0x9, 0),
            leaf(
                7,
                0,
                0,
                LEAF7_EBX_AVX2 | LEAF7_EBX_AVX512,
                LEAF7_ECX_PKU,
                LEAF7_EDX_AMX,
            ),
            leaf(0xb, 0, 0, 0, 0, 0),
            leaf(0xb, 1, 0, 0, 0, 0),
            leaf(0xd, 0, xcr0 as u32, 11008, 11008, (xcr0 >> 32) as u32),
            leaf(0xd, 1, 0xf, 12000, 1 << 11, 0),
            leaf(0xd, 2, 256, 576, 0, 0),
            leaf(0xd, 5, 64, 1088, 0, 0),
            leaf(0xd, 6, 512, 1152, 0, 0),
            leaf(0xd, 7, 1024, 1664, 0, 0),
            leaf(0xd, 9, 8, 2688, 0, 0),
            leaf(0xd, 11, 16, 0, 1, 0),
            leaf(0xd, 17, 64, 2752, 0, 0),
            leaf(0xd, 18, 8192, 2816, 2, 0),
            leaf(0x1d, 0, 1, 0, 0, 0),
            leaf(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            leaf(0x4000_0001, 0, 0x0100_00fb, 0, 0, 0),
            leaf(0x8000_0001, 0, 0, 0, EXT1_ECX_SVM | 1, 0),
            leaf(0x8000_0008, 0, 0x3030, 0, 0x7007, 0),
            leaf(0x8000_001e, 0, 9, 0x105, 0x300, 0),
        ])
        .unwrap()
    }

    #[test]
    fn cpuid_topology() {
        let entries = [
            leaf(1, 0, 0, 0xffff_ffff, 0, 0),
            leaf(0xb, 0, 0, 0, 0, 0),
            leaf(0xb, 1, 0, 0, 0, 0),
        ];
        let c = guest_cpuid(&CpuId::from_entries(&entries).unwrap(), &params(3, 4));
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0xffff);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_ne!(e[0].ecx & (1 << 24), 0);
        assert_eq!((e[1].edx, e[1].ebx), (3, 1));
        assert_eq!((e[2].eax, e[2].ebx, e[2].edx), (2, 4, 3));
        let one = guest_cpuid(
            &CpuId::from_entries(&entries).unwrap(),
            &CpuidParams {
                tsc_deadline: false,
                ..params(0, 1)
            },
        );
        assert_eq!(one.as_slice()[2].eax, 0);
        assert_eq!(one.as_slice()[0].edx & (1 << 28), 0);
        assert_eq!(one.as_slice()[0].ecx & (1 << 24), 0);
    }

    #[test]
    fn xsave_leaf_describes_only_offered_components() {
        let c = guest_cpuid(&synthetic_amd(), &params(0, 2));
        let d0 = find(&c, 0xd, 0);
        // x87, SSE, YMM, AVX-512 (3 components), PKRU; no AMX tiles.
        assert_eq!((d0.eax, d0.edx), (0x2e7, 0));
        // Standard size: PKRU at 2688 + 8 is the end.
        assert_eq!((d0.ebx, d0.ecx), (2696, 2696));
        let d1 = find(&c, 0xd, 1);
        // Compacted: 576 + 256 + 64 + 512 + 1024 + 8; no supervisor states.
        assert_eq!((d1.eax, d1.ebx, d1.ecx, d1.edx), (0xf, 2440, 0, 0));
        for (i, size) in [(2, 256), (5, 64), (6, 512), (7, 1024), (9, 8)] {
            assert_eq!(find(&c, 0xd, i).eax, size, "leaf 0xd.{i}");
        }
        for i in [11, 17, 18] {
            let e = find(&c, 0xd, i);
            assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0), "leaf 0xd.{i}");
        }
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.edx & LEAF7_EDX_AMX, 0);
        assert_eq!(l7.ebx & LEAF7_EBX_AVX512, LEAF7_EBX_AVX512);
        assert_ne!(l7.ecx & LEAF7_ECX_PKU, 0);
        assert_eq!(find(&c, 0x1d, 0).eax, 0);
    }

    #[test]
    fn initial_xcr0_is_the_offered_components() {
        let c = guest_cpuid(&synthetic_amd(), &params(0, 1));
        assert_eq!(initial_xcr0(&c), Some(0x2e7));
        let no_xsave =
            CpuId::from_entries(&[leaf(1, 0, 0, 0, 0, 0), leaf(0xd, 0, 7, 0, 0, 0)]).unwrap();
        assert_eq!(initial_xcr0(&no_xsave), None);
    }

    #[test]
    fn features_without_their_state_are_cleared() {
        // KVM offers YMM and AVX-512 but leaf 0xD lacks the AVX-512 sub-leaves, and no PKRU.
        let mut supported = synthetic_amd();
        for e in supported.as_mut_slice() {
            if e.function == 0xd && (5..=7).contains(&e.index) {
                e.eax = 0;
            }
            if e.function == 0xd && e.index == 0 {
                e.eax &= !(XCR0_PKRU as u32);
            }
        }
        let c = guest_cpuid(&supported, &params(0, 1));
        assert_eq!(find(&c, 0xd, 0).eax, 0x7);
        assert_eq!(find(&c, 0xd, 0).ebx, 832);
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.ebx & LEAF7_EBX_AVX512, 0);
        assert_ne!(l7.ebx & LEAF7_EBX_AVX2, 0);
        assert_eq!(l7.ecx & LEAF7_ECX_PKU, 0);
        assert_ne!(find(&c, 1, 0).ecx & LEAF1_ECX_AVX, 0);
    }

    #[test]
    fn no_nested_virtualization_power_or_topology_leaks() {
        let c = guest_cpuid(&synthetic_amd(), &params(2, 4));
        assert_eq!(find(&c, 1, 0).ecx & LEAF1_ECX_VMX, 0);
        assert_eq!(find(&c, 0x8000_0001, 0).ecx, 1);
        let l6 = find(&c, 6, 0);
        assert_eq!((l6.eax, l6.ebx, l6.ecx, l6.edx), (LEAF6_EAX_ARAT, 0, 0, 0));
        // 4 cores: 2 APIC id bits, NC = 3.
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, 0x2003);
        let e = find(&c, 0x8000_001e, 0);
        assert_eq!((e.eax, e.ebx, e.ecx), (2, 2, 0));
    }

    #[test]
    fn intel_cache_leaf_topology() {
        let intel = (0x756e_6547, 0x6c65_746e, 0x4965_6e69); // "GenuineIntel": ebx, ecx, edx
        let supported = CpuId::from_entries(&[
            leaf(0, 0, 0x1f, intel.0, intel.1, intel.2),
            leaf(4, 0, (1 << 5) | 1 | (0x3f << 26) | (1 << 14), 0, 0, 0),
            leaf(4, 3, (3 << 5) | 3 | (0x3f << 26) | (0xfff << 14), 0, 0, 0),
        ])
        .unwrap();
        let c = guest_cpuid(&supported, &params(0, 4));
        assert_eq!(find(&c, 4, 0).eax, (1 << 5) | 1 | (3 << 26));
        assert_eq!(find(&c, 4, 3).eax, (3 << 5) | 3 | (3 << 26) | (3 << 14));
    }

    #[test]
    fn tsc_frequency_leaf() {
        let with = guest_cpuid(
            &synthetic_amd(),
            &CpuidParams {
                tsc_khz: Some(2_994_000),
                ..params(0, 1)
            },
        );
        assert_eq!(find(&with, 0x4000_0000, 0).eax, CPUID_TSC_LEAF);
        let t = find(&with, CPUID_TSC_LEAF, 0);
        assert_eq!((t.eax, t.ebx), (2_994_000, 1_000_000));
        // kvm-clock's features are untouched.
        assert_eq!(find(&with, 0x4000_0001, 0).eax, 0x0100_00fb);
        // With HLT in the guest, asynchronous page faults (bit 4 of 0xfb) go.
        let no_apf = guest_cpuid(
            &synthetic_amd(),
            &CpuidParams {
                async_pf: false,
                ..params(0, 1)
            },
        );
        assert_eq!(find(&no_apf, 0x4000_0001, 0).eax, 0x0100_00eb);
        let without = guest_cpuid(&synthetic_amd(), &params(0, 1));
        assert_eq!(find(&without, 0x4000_0000, 0).eax, 0x4000_0001);
        assert!(!without
            .as_slice()
            .iter()
            .any(|e| e.function == CPUID_TSC_LEAF));
    }
}
