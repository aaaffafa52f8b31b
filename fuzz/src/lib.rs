//! The fuzz targets' logic, one function per target, called by the cargo-fuzz binaries in
//! `fuzz_targets/` (libFuzzer drives them) and shared with the corpus test in `tests/`.
//!
//! Each function takes the raw input and must not panic, whatever it is; where the code under
//! test makes a promise about its output (a parsed block re-serialises to itself, every ACPI
//! table's checksum is zero, ...), the function asserts it, so a broken promise is a finding too.

use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use devices::bus::{MmioBus, PioBus};
use devices::flush_hint::FlushHints;
use devices::i8042::I8042;
use devices::lifecycle::StopSignal;
use devices::pci::PciConfigIo;
use devices::pmem::backing::{Backing, BackingRequest};
use devices::pmem::infoblock::{self, InfoBlock, Namespace, INFO_BLOCK_SIZE};
use devices::pmem::mapping::PmemMapping;
use devices::power::{ResetControl, SleepControl};
use devices::serial::SerialPort;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub mod platform;

/// `--pmem` values: the whole option grammar (`vmm::pmem_option::parse_pmem`) and the value
/// parsers of `devices::pmem::options` it calls.
pub fn pmem_option(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = vmm::pmem_option::parse_pmem(text, 3) {
        // A parsed device always has a path and an id.
        assert!(
            !cfg.path.as_os_str().is_empty(),
            "{text:?} parsed with an empty path"
        );
        assert!(!cfg.id.is_empty(), "{text:?} parsed with an empty id");
    }
    use devices::pmem::options::{FormatPolicy, Memmap, NsMode};
    let _ = text.parse::<Memmap>();
    let _ = text.parse::<NsMode>();
    let _ = text.parse::<FormatPolicy>();
}

/// The info-block reader and validator: parse any block, validate it against a namespace whose
/// base and size come from the first 16 bytes of the input, and check that a parsed block
/// re-serialises to a block that parses to the same value. Each input is tried as it is and,
/// zero-padded to 4 KiB, with its checksum fixed, so mutations get past the checksum.
pub fn infoblock(data: &[u8]) {
    let (ns, block) = if data.len() >= 16 {
        let base = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
        // Namespaces up to 64 TiB: the memmap footprint walks the namespace one 128 MiB section
        // at a time, so a namespace of petabytes takes seconds per input (found by this
        // target: 12 s at 32 PiB), which no real backing below the guest's physical address
        // limit comes near.
        let size = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes")) % (1 << 46);
        (Namespace::io(base, size), &data[16..])
    } else {
        (Namespace::io(1 << 32, 1 << 30), data)
    };
    check_infoblock(block, &ns);
    let mut fixed = [0u8; INFO_BLOCK_SIZE];
    let n = block.len().min(INFO_BLOCK_SIZE);
    fixed[..n].copy_from_slice(&block[..n]);
    let sum = infoblock::checksum(&fixed);
    fixed[INFO_BLOCK_SIZE - 8..].copy_from_slice(&sum.to_le_bytes());
    check_infoblock(&fixed, &ns);
}

fn check_infoblock(block: &[u8], ns: &Namespace) {
    if let Ok(parsed) = InfoBlock::parse(block) {
        let _ = parsed.align();
        let _ = parsed.layout(ns);
        let _ = parsed.validate_for(ns);
        let again = InfoBlock::parse(&parsed.to_bytes()).expect("a parsed block re-parses");
        assert_eq!(again, parsed, "a parsed block round-trips through to_bytes");
    }
    if let Ok(parsed) = InfoBlock::parse_for(block, ns) {
        let _ = parsed.layout(ns);
        assert!(
            parsed.validate_for(ns).is_ok(),
            "parse_for accepted what validate_for refuses"
        );
    }
}

/// The ACPI builders from an arbitrary platform description (see [`platform`]): building
/// either fails with an error or gives tables whose checksums are all zero, with the RSDP at
/// the base and every table inside the blob.
pub fn acpi_tables(data: &[u8]) {
    let desc = platform::platform_from_bytes(data);
    if let Ok(tables) = acpi::build_tables(&desc, platform::ACPI_BASE, platform::ACPI_MAX) {
        platform::check_tables(&tables);
    }
}

/// One guest access on the port or MMIO bus.
#[derive(Arbitrary, Debug)]
enum Access {
    /// Port I/O near one of the devices (`port` is an offset from a device's base, so most
    /// accesses hit something) or anywhere.
    Pio {
        near: u8,
        offset: u8,
        size: Size,
        write: Option<u32>,
    },
    /// MMIO into the flush hints (two DIMMs, the second without a mapping) or next to them.
    Mmio {
        offset: u16,
        size: Size,
        write: Option<u64>,
    },
    /// Host bytes for the serial port's receive FIFO (console input).
    Input(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    B1,
    B2,
    B4,
    B8,
    Odd(u8),
}

impl Size {
    fn bytes(self) -> usize {
        match self {
            Size::B1 => 1,
            Size::B2 => 2,
            Size::B4 => 4,
            Size::B8 => 8,
            Size::Odd(n) => usize::from(n % 16),
        }
    }
}

/// Port bases the accesses aim near, as the monitor registers its devices.
const PORTS: [u16; 8] = [
    vmm::COM1_PORT,
    vmm::I8042_PORT,
    vmm::SLEEP_CONTROL_PORT,
    vmm::RESET_PORT,
    devices::pci::CONFIG_ADDRESS_PORT,
    devices::pci::CONFIG_DATA_PORT,
    0,
    0xfff8,
];

/// A 2 MiB file mapping for the flush hints, made once per process.
fn flush_target() -> Arc<PmemMapping> {
    static MAPPING: OnceLock<Arc<PmemMapping>> = OnceLock::new();
    MAPPING
        .get_or_init(|| {
            let dir = std::env::temp_dir();
            let path = dir.join(format!("pmem-vmm-fuzz-{}.img", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let backing = Backing::open(&BackingRequest {
                path: path.clone(),
                size: Some(2 << 20),
                readonly: false,
            })
            .expect("a 2 MiB scratch file in the temp directory");
            let mapping = backing.map().expect("mapping the scratch file");
            let _ = std::fs::remove_file(&path);
            Arc::new(mapping)
        })
        .clone()
}

/// The port-I/O and MMIO device models (COM1, i8042, ACPI sleep and reset registers, the PCI
/// configuration ports, the NFIT flush hints) on buses laid out as the monitor lays them out,
/// driven by an arbitrary access sequence.
pub fn devices(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let stop = Arc::new(StopSignal::new().expect("an eventfd"));
    let irq = EventFd::new(EFD_NONBLOCK).expect("an eventfd");
    let ready = EventFd::new(EFD_NONBLOCK).expect("an eventfd");
    let serial = Arc::new(Mutex::new(SerialPort::new(
        irq,
        ready,
        Box::new(std::io::sink()),
    )));
    let mut pio = PioBus::new();
    pio.insert(vmm::COM1_PORT, 8, serial.clone()).unwrap();
    pio.insert(
        vmm::SLEEP_CONTROL_PORT,
        2,
        Arc::new(Mutex::new(SleepControl::new(
            acpi::S5_SLEEP_TYPE,
            stop.clone(),
        ))),
    )
    .unwrap();
    pio.insert(
        vmm::RESET_PORT,
        1,
        Arc::new(Mutex::new(ResetControl::new(stop.clone()))),
    )
    .unwrap();
    pio.insert(
        vmm::I8042_PORT,
        5,
        Arc::new(Mutex::new(I8042::new(stop.clone()))),
    )
    .unwrap();
    let pci = PciConfigIo::new();
    pio.insert(
        devices::pci::CONFIG_ADDRESS_PORT,
        1,
        Arc::new(Mutex::new(pci.address_port())),
    )
    .unwrap();
    pio.insert(
        devices::pci::CONFIG_DATA_PORT,
        devices::pci::CONFIG_DATA_LEN,
        Arc::new(Mutex::new(pci.data_port())),
    )
    .unwrap();
    let hints = Arc::new(FlushHints::new(vec![Some(flush_target()), None]));
    let hints_len = hints.len();
    let mut mmio = MmioBus::new();
    mmio.insert(vmm::layout::FLUSH_HINT_BASE, hints_len, hints)
        .unwrap();

    let mut buf = [0u8; 16];
    let mut steps = 0;
    while !u.is_empty() && steps < 4096 {
        steps += 1;
        let Ok(access) = Access::arbitrary(&mut u) else {
            break;
        };
        match access {
            Access::Pio {
                near,
                offset,
                size,
                write,
            } => {
                let port = PORTS[usize::from(near) % PORTS.len()].wrapping_add(u16::from(offset));
                let data = &mut buf[..size.bytes()];
                match write {
                    Some(v) => {
                        let bytes = u64::from(v).to_le_bytes();
                        for (d, b) in data.iter_mut().zip(bytes.iter().cycle()) {
                            *d = *b;
                        }
                        pio.write(port, data);
                    }
                    None => {
                        pio.read(port, data);
                    }
                }
            }
            Access::Mmio {
                offset,
                size,
                write,
            } => {
                // From one page below the hints to one page past them.
                let addr =
                    vmm::layout::FLUSH_HINT_BASE - 4096 + u64::from(offset) % (hints_len + 8192);
                let data = &mut buf[..size.bytes()];
                match write {
                    Some(v) => {
                        for (d, b) in data.iter_mut().zip(v.to_le_bytes().iter().cycle()) {
                            *d = *b;
                        }
                        // The hints' backing is a healthy scratch file: a fault here is a bug.
                        mmio.write(addr, data)
                            .expect("flushing a healthy scratch backing cannot fail");
                    }
                    None => {
                        mmio.read(addr, data);
                    }
                }
            }
            Access::Input(bytes) => {
                let mut port = serial.lock().unwrap();
                let room = port.input_capacity();
                let taken = port.enqueue_input(&bytes);
                assert!(
                    taken <= bytes.len().min(room),
                    "serial took more than it had room for"
                );
            }
        }
    }
}

/// Guest RAM for the loader target: 64 MiB, made once per thread (the loaders write into it;
/// what an earlier input left behind does not matter to them).
fn loader_memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        let ranges: Vec<(GuestAddress, usize)> = vmm::layout::ram_regions(LOADER_RAM)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).expect("64 MiB of guest memory")
    })
}

const LOADER_RAM: u64 = 64 << 20;

/// A memfd holding the current input, reached by path (the loader opens the kernel by path).
struct MemFile {
    file: std::fs::File,
    path: PathBuf,
}

fn kernel_file() -> &'static Mutex<MemFile> {
    static FILE: OnceLock<Mutex<MemFile>> = OnceLock::new();
    FILE.get_or_init(|| {
        // SAFETY: memfd_create with a NUL-terminated name and valid flags; the returned fd is
        // checked and then owned by the File alone.
        let fd = unsafe { libc::memfd_create(c"pmem-vmm-fuzz-kernel".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh, open file descriptor that nothing else owns.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Mutex::new(MemFile { file, path })
    })
}

/// The bzImage and ELF (PVH) loaders: `vmm::boot::load` on the input as the kernel, into
/// 64 MiB of guest memory, with the zero page or PVH start info, command line and e820 map the
/// monitor writes. Any outcome but a panic is fine.
pub fn kernel_loader(data: &[u8]) {
    let mem = loader_memory();
    let guard = kernel_file().lock().unwrap_or_else(|e| e.into_inner());
    guard.file.set_len(0).expect("truncating the memfd");
    guard.file.write_all_at(data, 0).expect("writing the memfd");
    let _ = vmm::boot::load(
        mem,
        LOADER_RAM,
        &guard.path,
        None,
        "console=ttyS0",
        vmm::layout::ACPI_ADDR,
    );
}
