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
        &[],
    );
}

/// A label area in memory for [`nvdimm_dsm`], with the bytes the fuzzer's model expects.
struct FuzzLabels {
    bytes: Mutex<Vec<u8>>,
    readonly: bool,
}

impl devices::pmem::labels::LabelStore for FuzzLabels {
    fn size(&self) -> u32 {
        self.bytes.lock().unwrap().len() as u32
    }
    fn readonly(&self) -> bool {
        self.readonly
    }
    fn read(&self, offset: u32, buf: &mut [u8]) -> Result<(), devices::pmem::labels::LabelIoError> {
        let b = self.bytes.lock().unwrap();
        let start = offset as usize;
        // The mailbox must have checked the range; a slice out of range panics (a finding).
        buf.copy_from_slice(&b[start..start + buf.len()]);
        Ok(())
    }
    fn write_durably(
        &self,
        offset: u32,
        data: &[u8],
    ) -> Result<(), devices::pmem::labels::LabelIoError> {
        assert!(!self.readonly, "the mailbox wrote a read-only DIMM");
        let mut b = self.bytes.lock().unwrap();
        let start = offset as usize;
        b[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// The mailbox page as plain memory, for the doorbell.
struct FuzzPage(Arc<Mutex<Vec<u8>>>);

impl devices::nvdimm_dsm::MailboxPage for FuzzPage {
    fn read_page(&self, buf: &mut [u8]) -> Result<(), String> {
        buf.copy_from_slice(&self.0.lock().unwrap());
        Ok(())
    }
    fn write_page(&self, offset: u64, data: &[u8]) -> Result<(), String> {
        let o = offset as usize;
        self.0.lock().unwrap()[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// One `_DSM` request: mostly the values Linux sends, so the fuzzer reaches every branch, with
/// any of them replaceable by arbitrary bytes.
#[derive(Arbitrary, Debug)]
struct DsmCall {
    handle: u8,
    revision: u32,
    function: u8,
    /// Use the Intel UUID (else `uuid`).
    intel: bool,
    uuid: [u8; 16],
    offset: u32,
    length: u16,
    /// Declare the payload's length as built (else `declared`).
    honest: bool,
    declared: u32,
    data: Vec<u8>,
    /// A raw page instead of the structured request.
    raw: Option<Vec<u8>>,
}

/// The NVDIMM `_DSM` mailbox (`devices::nvdimm_dsm`) behind its doorbell, driven by arbitrary
/// requests against two labelled DIMMs (one read-only) and one without labels but with SMART,
/// checked against a model: the answer fits the page and is a 4-byte status (or an 8-byte mask
/// for function 0); a successful read returns the model's bytes; only a successful write changes
/// the area, and exactly as asked; SMART answers have their structures' sizes and the
/// thresholds read back as last set.
pub fn nvdimm_dsm(data: &[u8]) {
    use devices::bus::PioDevice;
    use devices::nvdimm_dsm::{DsmDoorbell, NvdimmDsm, INTEL_DSM_UUID};
    use geometry::dsm_mailbox as page;
    let mut u = Unstructured::new(data);
    let size = 128 << 10;
    let stores: Vec<Arc<FuzzLabels>> = [false, true]
        .into_iter()
        .map(|readonly| {
            Arc::new(FuzzLabels {
                bytes: Mutex::new((0..size).map(|i| (i % 251) as u8).collect()),
                readonly,
            })
        })
        .collect();
    let mut model: Vec<Vec<u8>> = stores
        .iter()
        .map(|s| s.bytes.lock().unwrap().clone())
        .collect();
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd");
    let events = Arc::new(devices::nvdimm_events::HealthEvents::new(irq));
    let dsm = Arc::new(
        NvdimmDsm::new(vec![
            Some(stores[0].clone() as Arc<dyn devices::pmem::labels::LabelStore>),
            None,
            Some(stores[1].clone() as Arc<dyn devices::pmem::labels::LabelStore>),
        ])
        .with_health_events(events),
    );
    // The DIMM without labels (handle 2) has SMART: functions 1, 2 and 17.
    dsm.set_health(1, Some(devices::nvdimm_dsm::HealthState::Ok));
    let mut thresholds: Option<Vec<u8>> = None;
    let shared = Arc::new(Mutex::new(vec![0u8; page::PAGE_SIZE as usize]));
    let mut bell = DsmDoorbell::new(Box::new(FuzzPage(shared.clone())), dsm);
    for _ in 0..16 {
        let Ok(call) = DsmCall::arbitrary(&mut u) else {
            break;
        };
        let mut p = vec![0u8; page::PAGE_SIZE as usize];
        let payload: Vec<u8> = match call.function {
            5 => [
                call.offset.to_le_bytes(),
                u32::from(call.length).to_le_bytes(),
            ]
            .concat(),
            6 => {
                let mut v = [
                    call.offset.to_le_bytes(),
                    u32::from(call.length).to_le_bytes(),
                ]
                .concat();
                v.extend_from_slice(&call.data);
                v
            }
            _ => call.data.clone(),
        };
        let declared = if call.honest {
            payload.len() as u32
        } else {
            call.declared
        };
        p[0..4].copy_from_slice(&u32::from(call.handle % 5).to_le_bytes());
        p[4..8].copy_from_slice(&call.revision.to_le_bytes());
        p[8..12].copy_from_slice(&u32::from(call.function).to_le_bytes());
        p[12..16].copy_from_slice(&declared.to_le_bytes());
        p[16..32].copy_from_slice(if call.intel {
            &INTEL_DSM_UUID
        } else {
            &call.uuid
        });
        let n = payload.len().min(page::MAX_IN_PAYLOAD as usize);
        p[32..32 + n].copy_from_slice(&payload[..n]);
        if let Some(raw) = &call.raw {
            let n = raw.len().min(p.len());
            p[..n].copy_from_slice(&raw[..n]);
        }
        let request = p.clone();
        *shared.lock().unwrap() = p;
        bell.write(0, &[0; 4]);
        let answer = shared.lock().unwrap().clone();
        let len = u32::from_le_bytes(answer[0..4].try_into().unwrap()) as u64;
        assert!(len <= page::MAX_OUT_DATA, "answer of {len} bytes");
        let out = &answer[4..4 + len as usize];
        let function = u32::from_le_bytes(request[8..12].try_into().unwrap());
        let handle = u32::from_le_bytes(request[0..4].try_into().unwrap());
        let dimm = match handle {
            1 => Some(0),
            3 => Some(1),
            _ => None,
        };
        if function == 0 {
            assert_eq!(out.len(), 8, "function 0 answers a mask");
        } else {
            assert!(out.len() >= 4);
            let status = u32::from_le_bytes(out[0..4].try_into().unwrap());
            assert!(status <= 4, "status {status}");
            let input = &request[32..];
            let off = u32::from_le_bytes(input[0..4].try_into().unwrap()) as usize;
            let length = u32::from_le_bytes(input[4..8].try_into().unwrap()) as usize;
            match (status, function, dimm) {
                (0, 5, Some(i)) => assert_eq!(&out[4..], &model[i][off..off + length]),
                (0, 6, Some(i)) => {
                    model[i][off..off + length].copy_from_slice(&input[8..8 + length]);
                    assert_eq!(out.len(), 4);
                }
                (0, 4, Some(_)) => assert_eq!(out.len(), 12),
                (0, 1, None) if handle == 2 => assert_eq!(out.len(), 4 + 128),
                (0, 2, None) if handle == 2 => {
                    assert_eq!(out.len(), 4 + 8);
                    if let Some(t) = &thresholds {
                        assert_eq!(&out[4..11], t.as_slice(), "thresholds as last set");
                    }
                }
                (0, 17, None) if handle == 2 => {
                    assert_eq!(out.len(), 4);
                    thresholds = Some(input[..7].to_vec());
                }
                (0, ..) => panic!("success for function {function} on handle {handle}"),
                _ => assert_eq!(out.len(), 4, "an error is a bare status"),
            }
        }
        for (s, m) in stores.iter().zip(&model) {
            assert!(
                *s.bytes.lock().unwrap() == *m,
                "the label area changed unasked"
            );
        }
    }
}
