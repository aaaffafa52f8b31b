//! The architectural state a vCPU starts in: CPUID, MSRs, registers, FPU, local APIC, and the
//! GDT and identity page tables that the 64-bit entry needs in guest memory.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
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

/// Adjusts KVM's supported CPUID for vCPU `id` of `count`: APIC ids, topology (one thread per
/// core, all cores in one package) and the hypervisor bit.
pub fn guest_cpuid(supported: &CpuId, id: u32, count: u32, tsc_deadline: bool) -> CpuId {
    let mut cpuid = supported.clone();
    // Bits needed to number `count` cores in the x2APIC id.
    let core_bits = 32 - (count.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0xffff) | (count.min(255) << 16) | (id << 24);
                e.ecx |= 1 << 31; // running under a hypervisor
                if tsc_deadline {
                    e.ecx |= 1 << 24;
                }
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: ebx[23:16] is meaningful
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
            _ => {}
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

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
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

/// Sets up everything but the boot registers; applies to every vCPU.
pub fn configure_vcpu(vcpu: &VcpuFd, id: u32, cpuid: &CpuId) -> Result<(), CpuError> {
    vcpu.set_cpuid2(cpuid).map_err(kvm_err(id, "set CPUID"))?;
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
    use kvm_bindings::kvm_cpuid_entry2;

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

    #[test]
    fn cpuid_topology() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_ffff,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let c = guest_cpuid(&CpuId::from_entries(&entries).unwrap(), 3, 4, true);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0xffff);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_ne!(e[0].ecx & (1 << 24), 0);
        assert_eq!((e[1].edx, e[1].ebx), (3, 1));
        assert_eq!((e[2].eax, e[2].ebx, e[2].edx), (2, 4, 3));
        let one = guest_cpuid(&CpuId::from_entries(&entries).unwrap(), 0, 1, false);
        assert_eq!(one.as_slice()[2].eax, 0);
        assert_eq!(one.as_slice()[0].edx & (1 << 28), 0);
    }
}
