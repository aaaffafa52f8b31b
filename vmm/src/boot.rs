//! Loading the kernel and initramfs into guest memory and writing the boot protocol structures.
//!
//! Two entry protocols: a bzImage enters at its 64-bit entry point with a Linux zero page, an ELF
//! vmlinux enters at its PVH entry point (32-bit protected mode) with an `hvm_start_info`. Both
//! get the same memory map, command line, initramfs and RSDP address. All of this happens before
//! any KVM object exists, so a bad kernel or an initramfs that does not fit is a usage error.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, KernelLoader};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::layout::{self, E820Entry, PAGE_SIZE};

/// Where the vCPU starts and what it finds in its registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit Linux boot protocol: long mode, `rsi` = zero page.
    Linux64 { rip: u64, zero_page: u64 },
    /// PVH: 32-bit protected mode without paging, `rbx` = `hvm_start_info`.
    Pvh { rip: u64, start_info: u64 },
}

#[derive(Debug, Error)]
pub enum BootError {
    #[error("--kernel {path:?}: cannot read it: {source}")]
    KernelUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--kernel {path:?}: not a kernel: expected a bzImage or an x86-64 ELF vmlinux ({detail})"
    )]
    NotAKernel { path: PathBuf, detail: String },
    #[error("--kernel {path:?}: this ELF kernel has no PVH entry note; build it with CONFIG_PVH=y or use its bzImage")]
    NoPvhEntry { path: PathBuf },
    #[error("--initramfs {path:?}: cannot read it: {source}")]
    InitramfsUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--initramfs {path:?}: {size} bytes do not fit in the guest's low RAM ({available} bytes free between the kernel and {limit:#x}); give the guest more --memory")]
    InitramfsTooLarge {
        path: PathBuf,
        size: u64,
        available: u64,
        limit: u64,
    },
    #[error("--cmdline: {len} bytes is longer than the {max} bytes this kernel accepts")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("--cmdline: {0}")]
    Cmdline(String),
    #[error("{option} {path:?}: it is {what}; give a regular file")]
    NotRegular {
        option: InputOption,
        path: PathBuf,
        what: &'static str,
    },
    #[error("writing boot structures into guest memory: {0}")]
    GuestMemory(String),
}

/// The options that name a file the monitor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputOption {
    Kernel,
    Initramfs,
}

impl std::fmt::Display for InputOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputOption::Kernel => "--kernel",
            InputOption::Initramfs => "--initramfs",
        })
    }
}

/// Opens the kernel or initramfs for reading. Only a regular file is accepted, and it is looked
/// at before it is opened and opened with `O_NONBLOCK`: opening a FIFO for reading would block
/// until a writer comes, and a device node may have side effects. The open descriptor is checked
/// again, so a path swapped meanwhile is refused too.
pub fn open_input(option: InputOption, path: &Path) -> Result<File, BootError> {
    use std::os::unix::fs::OpenOptionsExt;
    let unreadable = |source| match option {
        InputOption::Kernel => BootError::KernelUnreadable {
            path: path.to_path_buf(),
            source,
        },
        InputOption::Initramfs => BootError::InitramfsUnreadable {
            path: path.to_path_buf(),
            source,
        },
    };
    let not_regular = |what| BootError::NotRegular {
        option,
        path: path.to_path_buf(),
        what,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_regular(crate::identity::describe_file_type(
            &meta.file_type(),
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(not_regular(crate::identity::describe_file_type(
            &meta.file_type(),
        )));
    }
    Ok(file)
}

/// Loads everything and returns the entry point. `rsdp` is the guest address of the ACPI RSDP;
/// `legacy_pmem` are the `firmware=e820` windows, persistent memory in the memory map.
pub fn load(
    mem: &GuestMemoryMmap,
    memory: u64,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
    rsdp: u64,
    legacy_pmem: &[layout::Region],
) -> Result<Entry, BootError> {
    let unreadable = |source| BootError::KernelUnreadable {
        path: kernel.to_path_buf(),
        source,
    };
    let mut file = open_input(InputOption::Kernel, kernel)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| BootError::NotAKernel {
            path: kernel.to_path_buf(),
            detail: format!("too short: {e}"),
        })?;
    file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
    let not_a_kernel = |detail: String| BootError::NotAKernel {
        path: kernel.to_path_buf(),
        detail,
    };

    let e820 = layout::e820_map(memory, legacy_pmem);
    if &magic == b"\x7fELF" {
        let loaded = Elf::load(
            mem,
            None,
            &mut file,
            Some(GuestAddress(layout::HIMEM_START)),
        )
        .map_err(|e| not_a_kernel(format!("ELF: {e}")))?;
        let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
            return Err(BootError::NoPvhEntry {
                path: kernel.to_path_buf(),
            });
        };
        let kernel_end = loaded.kernel_end;
        let initrd = load_initramfs(mem, memory, initramfs, kernel_end, u32::MAX as u64)?;
        write_cmdline(mem, cmdline, layout::CMDLINE_MAX_SIZE)?;
        write_pvh_info(mem, &e820, initrd, rsdp)?;
        Ok(Entry::Pvh {
            rip: entry.0,
            start_info: layout::PVH_INFO_ADDR,
        })
    } else {
        let loaded = BzImage::load(
            mem,
            None,
            &mut file,
            Some(GuestAddress(layout::HIMEM_START)),
        )
        .map_err(|e| not_a_kernel(format!("bzImage: {e}")))?;
        let hdr = loaded
            .setup_header
            .ok_or_else(|| not_a_kernel("bzImage without a setup header".into()))?;
        if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(not_a_kernel(format!(
                "boot protocol {}.{} without a 64-bit entry point (needs 2.12+)",
                hdr.version >> 8,
                hdr.version & 0xff
            )));
        }
        let load_addr = loaded.kernel_load.0;
        // The kernel decompresses in place and needs init_size bytes from its load address.
        let kernel_end = (load_addr + u64::from(hdr.init_size)).max(loaded.kernel_end);
        let initrd = load_initramfs(
            mem,
            memory,
            initramfs,
            kernel_end,
            u64::from(hdr.initrd_addr_max),
        )?;
        let max_cmdline = if hdr.cmdline_size > 0 {
            (hdr.cmdline_size as usize + 1).min(layout::CMDLINE_MAX_SIZE)
        } else {
            layout::CMDLINE_MAX_SIZE
        };
        let len = write_cmdline(mem, cmdline, max_cmdline)?;
        write_zero_page(mem, hdr, &e820, initrd, len, rsdp)?;
        Ok(Entry::Linux64 {
            // startup_64 sits 0x200 bytes into the protected-mode kernel (boot protocol 2.12+).
            rip: load_addr + 0x200,
            zero_page: layout::ZERO_PAGE_ADDR,
        })
    }
}

/// `xloadflags` bit: the kernel has the 64-bit entry point at offset 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;

/// Places the initramfs as high as allowed in low RAM (where the kernel prefers it, away from
/// its own decompression area) and returns (address, size).
fn load_initramfs(
    mem: &GuestMemoryMmap,
    memory: u64,
    initramfs: Option<&Path>,
    kernel_end: u64,
    addr_max: u64,
) -> Result<Option<(u64, u64)>, BootError> {
    let Some(path) = initramfs else {
        return Ok(None);
    };
    let unreadable = |source| BootError::InitramfsUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut file = open_input(InputOption::Initramfs, path)?;
    let meta = file.metadata().map_err(unreadable)?;
    let size = meta.len();
    let limit = layout::low_ram_end(memory).min(addr_max.saturating_add(1));
    let available = limit.saturating_sub(kernel_end);
    let too_large = || BootError::InitramfsTooLarge {
        path: path.to_path_buf(),
        size,
        available,
        limit,
    };
    if size > available {
        return Err(too_large());
    }
    let addr = (limit - size) & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(
        GuestAddress(addr),
        &mut VolatileFile(&mut file),
        size as usize,
    )
    .map_err(|e| unreadable(std::io::Error::other(e.to_string())))?;
    Ok(Some((addr, size)))
}

/// Adapts `File` to vm-memory's volatile reader without going through an intermediate buffer.
struct VolatileFile<'a>(&'a mut File);

impl ReadVolatile for VolatileFile<'_> {
    fn read_volatile<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        buf: &mut vm_memory::VolatileSlice<B>,
    ) -> Result<usize, vm_memory::VolatileMemoryError> {
        self.0.read_volatile(buf)
    }
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<usize, BootError> {
    // `max` counts the terminating NUL.
    if cmdline.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let mut c = Cmdline::new(max).map_err(|e| BootError::Cmdline(e.to_string()))?;
    c.insert_str(cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE_ADDR), &c)
        .map_err(|e| BootError::GuestMemory(e.to_string()))?;
    Ok(cmdline.len())
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    hdr: setup_header,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
    cmdline_len: usize,
    rsdp: u64,
) -> Result<(), BootError> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = 0xff; // "undefined" boot loader
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    if e820.len() > params.e820_table.len() {
        return Err(BootError::GuestMemory("too many e820 entries".into()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(|e| BootError::GuestMemory(e.to_string()))
}

/// `hvm_start_info.magic` (xen/include/public/arch-x86/hvm/start_info.h).
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
    rsdp: u64,
) -> Result<(), BootError> {
    if e820.len() > layout::E820_MAX_ENTRIES {
        return Err(BootError::GuestMemory("too many e820 entries".into()));
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        rsdp_paddr: rsdp,
        memmap_paddr: layout::PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_ADDR));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_ADDR;
        params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_ADDR));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(layout::PVH_MODLIST_ADDR),
        );
    }
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootError::GuestMemory(e.to_string()))
}

/// Writes `bytes` (ACPI tables, page tables, GDT) at `addr`.
pub fn write_bytes(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| BootError::GuestMemory(format!("at {addr:#x}: {e}")))
}
