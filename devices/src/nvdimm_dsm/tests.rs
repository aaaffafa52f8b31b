use std::sync::Mutex;

use super::*;

const AREA: u32 = 128 << 10;

/// A label store in memory that counts writes and can be told to fail them.
struct MemStore {
    bytes: Mutex<Vec<u8>>,
    readonly: bool,
    fail_flush: bool,
    writes: Mutex<u32>,
}

impl MemStore {
    fn new(readonly: bool, fail_flush: bool) -> Arc<MemStore> {
        let bytes = (0..AREA).map(|i| (i * 7 + 3) as u8).collect();
        Arc::new(MemStore {
            bytes: Mutex::new(bytes),
            readonly,
            fail_flush,
            writes: Mutex::new(0),
        })
    }
    fn snapshot(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

impl LabelStore for MemStore {
    fn size(&self) -> u32 {
        AREA
    }
    fn readonly(&self) -> bool {
        self.readonly
    }
    fn read(&self, offset: u32, buf: &mut [u8]) -> Result<(), LabelIoError> {
        let b = self.bytes.lock().unwrap();
        buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_durably(&self, offset: u32, data: &[u8]) -> Result<(), LabelIoError> {
        if self.fail_flush {
            return Err(LabelIoError::Flush(crate::pmem::backing::BackingError::io(
                std::path::Path::new("/x"),
                "msync",
                std::io::Error::from_raw_os_error(libc::EIO),
            )));
        }
        *self.writes.lock().unwrap() += 1;
        self.bytes.lock().unwrap()[offset as usize..offset as usize + data.len()]
            .copy_from_slice(data);
        Ok(())
    }
}

/// A page as the AML writes it.
fn page_for(handle: u32, revision: u32, function: u32, uuid: [u8; 16], input: &[u8]) -> Vec<u8> {
    page_declaring(handle, revision, function, uuid, input, input.len() as u32)
}

fn page_declaring(
    handle: u32,
    revision: u32,
    function: u32,
    uuid: [u8; 16],
    input: &[u8],
    declared: u32,
) -> Vec<u8> {
    let mut p = vec![0u8; page::PAGE_SIZE as usize];
    p[0..4].copy_from_slice(&handle.to_le_bytes());
    p[4..8].copy_from_slice(&revision.to_le_bytes());
    p[8..12].copy_from_slice(&function.to_le_bytes());
    p[12..16].copy_from_slice(&declared.to_le_bytes());
    p[16..32].copy_from_slice(&uuid);
    let n = input.len().min(page::MAX_IN_PAYLOAD as usize);
    p[32..32 + n].copy_from_slice(&input[..n]);
    p
}

fn rw(offset: u32, length: u32) -> Vec<u8> {
    let mut v = offset.to_le_bytes().to_vec();
    v.extend_from_slice(&length.to_le_bytes());
    v
}

fn set(offset: u32, length: u32, data: &[u8]) -> Vec<u8> {
    let mut v = rw(offset, length);
    v.extend_from_slice(data);
    v
}

struct Fixture {
    dsm: NvdimmDsm,
    labelled: Arc<MemStore>,
    readonly: Arc<MemStore>,
}

/// DIMM handle 1 labelled, 2 without labels, 3 labelled read-only.
fn fixture() -> Fixture {
    let labelled = MemStore::new(false, false);
    let readonly = MemStore::new(true, false);
    let dsm = NvdimmDsm::new(vec![
        Some(labelled.clone() as Arc<dyn LabelStore>),
        None,
        Some(readonly.clone() as Arc<dyn LabelStore>),
    ]);
    Fixture {
        dsm,
        labelled,
        readonly,
    }
}

fn call(f: &Fixture, page: &[u8]) -> Vec<u8> {
    let out = f.dsm.call(&DsmRequest::decode(page).unwrap());
    assert!(out.len() as u64 <= page::MAX_OUT_DATA);
    out
}

fn status_of(out: &[u8]) -> u32 {
    u32::from_le_bytes(out[..4].try_into().unwrap())
}

const U: [u8; 16] = INTEL_DSM_UUID;

#[test]
fn uuid_bytes_are_the_intel_family_guid() {
    // 4309AC30-0D11-11E4-9191-0800200C9A66 in ToUUID order.
    let mut expect = 0x4309_ac30u32.to_le_bytes().to_vec();
    expect.extend_from_slice(&0x0d11u16.to_le_bytes());
    expect.extend_from_slice(&0x11e4u16.to_le_bytes());
    expect.extend_from_slice(&[0x91, 0x91, 0x08, 0x00, 0x20, 0x0c, 0x9a, 0x66]);
    assert_eq!(INTEL_DSM_UUID.as_slice(), expect.as_slice());
}

#[test]
fn query_lists_the_label_functions() {
    let f = fixture();
    assert_eq!(call(&f, &page_for(1, 1, 0, U, &[])), 0x71u64.to_le_bytes());
    // Read-only: no set config data.
    assert_eq!(call(&f, &page_for(3, 1, 0, U, &[])), 0x31u64.to_le_bytes());
    // No labels: the Intel family with no function (bit 0 only: see `call`).
    assert_eq!(call(&f, &page_for(2, 1, 0, U, &[])), 1u64.to_le_bytes());
    // No DIMM, the root, another UUID, another revision: nothing supported.
    for p in [
        page_for(4, 1, 0, U, &[]),
        page_for(0, 1, 0, U, &[]),
        page_for(1, 1, 0, [0; 16], &[]),
        page_for(1, 2, 0, U, &[]),
        page_for(1, 0, 0, U, &[]),
    ] {
        assert_eq!(call(&f, &p), 0u64.to_le_bytes());
    }
}

#[test]
fn config_size_read_and_write_round_trip() {
    let f = fixture();
    let out = call(&f, &page_for(1, 1, 4, U, &[]));
    assert_eq!(status_of(&out), 0);
    assert_eq!(&out[4..8], &AREA.to_le_bytes());
    assert_eq!(&out[8..12], &MAX_TRANSFER.to_le_bytes());
    assert_eq!(MAX_TRANSFER, 4056);

    let data: Vec<u8> = (0..300u32).map(|i| i as u8 ^ 0x5a).collect();
    let out = call(&f, &page_for(1, 1, 6, U, &set(1000, 300, &data)));
    assert_eq!(out, 0u32.to_le_bytes());
    assert_eq!(&f.labelled.snapshot()[1000..1300], data.as_slice());
    let out = call(&f, &page_for(1, 1, 5, U, &rw(1000, 300)));
    assert_eq!(status_of(&out), 0);
    assert_eq!(&out[4..], data.as_slice());

    // The largest transfer, at the very end of the area.
    let big = vec![0xeeu8; MAX_TRANSFER as usize];
    let off = AREA - MAX_TRANSFER;
    assert_eq!(
        call(&f, &page_for(1, 1, 6, U, &set(off, MAX_TRANSFER, &big))),
        0u32.to_le_bytes()
    );
    let out = call(&f, &page_for(1, 1, 5, U, &rw(off, MAX_TRANSFER)));
    assert_eq!(out.len(), 4 + MAX_TRANSFER as usize);
    assert_eq!(&out[4..], big.as_slice());
}

#[test]
fn zero_length_transfers_succeed_and_change_nothing() {
    let f = fixture();
    let before = f.labelled.snapshot();
    assert_eq!(
        call(&f, &page_for(1, 1, 5, U, &rw(0, 0))),
        0u32.to_le_bytes()
    );
    assert_eq!(
        call(&f, &page_for(1, 1, 6, U, &set(AREA, 0, &[]))),
        0u32.to_le_bytes(),
        "zero bytes at the end is inside the area"
    );
    assert_eq!(f.labelled.snapshot(), before);
}

/// Thirty-odd hostile requests: each gets its status, and no label byte changes.
#[test]
fn hostile_requests_get_their_status_and_change_nothing() {
    use DsmStatus::*;
    let f = fixture();
    let before = f.labelled.snapshot();
    let ro_before = f.readonly.snapshot();
    let oversized = vec![0u8; page::MAX_IN_PAYLOAD as usize];
    let cases: Vec<(&str, Vec<u8>, DsmStatus)> = vec![
        (
            "SMART without health=",
            page_for(1, 1, 1, U, &[]),
            Unsupported,
        ),
        ("function 2", page_for(1, 1, 2, U, &[]), Unsupported),
        ("function 3", page_for(1, 1, 3, U, &[]), Unsupported),
        ("function 7", page_for(1, 1, 7, U, &[]), Unsupported),
        ("function 31", page_for(1, 1, 31, U, &[]), Unsupported),
        ("function 64", page_for(1, 1, 64, U, &[]), Unsupported),
        (
            "function u32::MAX",
            page_for(1, 1, u32::MAX, U, &[]),
            Unsupported,
        ),
        (
            "revision 0",
            page_for(1, 0, 6, U, &set(0, 4, &[1; 4])),
            Unsupported,
        ),
        (
            "revision 2",
            page_for(1, 2, 6, U, &set(0, 4, &[1; 4])),
            Unsupported,
        ),
        (
            "revision u32::MAX",
            page_for(1, u32::MAX, 5, U, &rw(0, 4)),
            Unsupported,
        ),
        (
            "zero UUID",
            page_for(1, 1, 6, [0; 16], &set(0, 4, &[1; 4])),
            Unsupported,
        ),
        (
            "root UUID",
            page_for(
                1,
                1,
                4,
                [
                    0xa4, 0xe7, 0x10, 0x2f, 0x91, 0x9e, 0xe4, 0x11, 0x89, 0xd3, 0x12, 0x3b, 0x93,
                    0xf7, 0x5c, 0xba,
                ],
                &[],
            ),
            Unsupported,
        ),
        (
            "one UUID byte off",
            page_for(
                1,
                1,
                4,
                {
                    let mut u = U;
                    u[15] ^= 1;
                    u
                },
                &[],
            ),
            Unsupported,
        ),
        (
            "handle 0 (root)",
            page_for(0, 1, 6, U, &set(0, 4, &[1; 4])),
            NoMemoryDevice,
        ),
        (
            "handle past the DIMMs",
            page_for(4, 1, 5, U, &rw(0, 4)),
            NoMemoryDevice,
        ),
        (
            "handle u32::MAX",
            page_for(u32::MAX, 1, 6, U, &set(0, 4, &[1; 4])),
            NoMemoryDevice,
        ),
        (
            "DIMM without labels, size",
            page_for(2, 1, 4, U, &[]),
            Unsupported,
        ),
        (
            "DIMM without labels, write",
            page_for(2, 1, 6, U, &set(0, 4, &[1; 4])),
            Unsupported,
        ),
        (
            "read-only DIMM, write",
            page_for(3, 1, 6, U, &set(0, 4, &[1; 4])),
            Unsupported,
        ),
        (
            "size with an input",
            page_for(1, 1, 4, U, &[1, 2, 3, 4]),
            InvalidInput,
        ),
        (
            "read past the end",
            page_for(1, 1, 5, U, &rw(AREA - 4, 8)),
            InvalidInput,
        ),
        (
            "read starting at the end",
            page_for(1, 1, 5, U, &rw(AREA, 1)),
            InvalidInput,
        ),
        (
            "read offset wrapping u32",
            page_for(1, 1, 5, U, &rw(u32::MAX, 2)),
            InvalidInput,
        ),
        (
            "read length u32::MAX",
            page_for(1, 1, 5, U, &rw(0, u32::MAX)),
            InvalidInput,
        ),
        (
            "read over max transfer",
            page_for(1, 1, 5, U, &rw(0, MAX_TRANSFER + 1)),
            InvalidInput,
        ),
        (
            "read input truncated",
            page_for(1, 1, 5, U, &[0, 0, 0, 0, 4, 0]),
            InvalidInput,
        ),
        ("read input empty", page_for(1, 1, 5, U, &[]), InvalidInput),
        (
            "read input too long",
            page_for(1, 1, 5, U, &set(0, 4, &[0; 4])),
            InvalidInput,
        ),
        (
            "write past the end",
            page_for(1, 1, 6, U, &set(AREA - 2, 4, &[9; 4])),
            InvalidInput,
        ),
        (
            "write offset wrapping u32",
            page_for(1, 1, 6, U, &set(u32::MAX - 1, 4, &[9; 4])),
            InvalidInput,
        ),
        (
            "write offset past the end",
            page_for(1, 1, 6, U, &set(AREA + 4096, 4, &[9; 4])),
            InvalidInput,
        ),
        (
            "write over max transfer",
            page_for(
                1,
                1,
                6,
                U,
                &set(0, MAX_TRANSFER + 1, &oversized[..MAX_TRANSFER as usize + 1]),
            ),
            InvalidInput,
        ),
        (
            "write data shorter than its length",
            page_for(1, 1, 6, U, &set(0, 16, &[9; 8])),
            InvalidInput,
        ),
        (
            "write data longer than its length",
            page_for(1, 1, 6, U, &set(0, 4, &[9; 8])),
            InvalidInput,
        ),
        (
            "write header truncated",
            page_for(1, 1, 6, U, &[0, 0, 0, 0, 4]),
            InvalidInput,
        ),
        ("write input empty", page_for(1, 1, 6, U, &[]), InvalidInput),
        (
            "write input larger than the page",
            page_declaring(
                1,
                1,
                6,
                U,
                &set(0, 4, &[9; 4]),
                page::MAX_IN_PAYLOAD as u32 + 1,
            ),
            InvalidInput,
        ),
        (
            "write declaring u32::MAX bytes",
            page_declaring(1, 1, 6, U, &set(0, 4, &[9; 4]), u32::MAX),
            InvalidInput,
        ),
        (
            "read declaring more than the page",
            page_declaring(1, 1, 5, U, &rw(0, 4), 5000),
            InvalidInput,
        ),
        (
            "write filling the page",
            page_for(1, 1, 6, U, &oversized),
            InvalidInput,
        ),
    ];
    assert!(cases.len() >= 30);
    for (what, p, expect) in cases {
        let out = call(&f, &p);
        assert_eq!(out, (expect as u32).to_le_bytes(), "{what}");
        assert_eq!(f.labelled.snapshot(), before, "{what}: labels changed");
        assert_eq!(f.readonly.snapshot(), ro_before, "{what}: labels changed");
    }
    assert_eq!(*f.labelled.writes.lock().unwrap(), 0);
}

#[test]
fn a_write_that_cannot_be_made_durable_is_a_hardware_error() {
    let failing = MemStore::new(false, true);
    let dsm = NvdimmDsm::new(vec![Some(failing.clone() as Arc<dyn LabelStore>)]);
    let p = page_for(1, 1, 6, U, &set(0, 4, &[1; 4]));
    let out = dsm.call(&DsmRequest::decode(&p).unwrap());
    assert_eq!(out, (DsmStatus::HardwareError as u32).to_le_bytes());
}

#[test]
fn decode_refuses_a_short_page() {
    assert!(DsmRequest::decode(&[0u8; 4095]).is_none());
    assert!(DsmRequest::decode(&[0u8; 4097]).is_none());
}

#[test]
fn hot_added_dimms_get_their_store() {
    let dsm = NvdimmDsm::new(Vec::new());
    let p = page_for(5, 1, 4, U, &[]);
    assert_eq!(
        dsm.call(&DsmRequest::decode(&p).unwrap()),
        (DsmStatus::NoMemoryDevice as u32).to_le_bytes()
    );
    dsm.set_dimm(4, Some(MemStore::new(false, false) as Arc<dyn LabelStore>));
    assert_eq!(status_of(&dsm.call(&DsmRequest::decode(&p).unwrap())), 0);
}

/// The page in memory, for the doorbell.
struct VecPage(Arc<Mutex<Vec<u8>>>);

impl MailboxPage for VecPage {
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

#[test]
fn the_doorbell_answers_in_the_page() {
    let f = fixture();
    let shared = Arc::new(Mutex::new(page_for(1, 1, 5, U, &rw(8, 4))));
    let dsm = Arc::new(f.dsm);
    let mut bell = DsmDoorbell::new(Box::new(VecPage(shared.clone())), dsm);
    // Only a 4-byte write at offset 0 rings.
    bell.write(0, &[0]);
    bell.write(2, &[0, 0]);
    assert_eq!(bell.calls, 0);
    bell.write(0, &[0; 4]);
    assert_eq!(bell.calls, 1);
    let p = shared.lock().unwrap().clone();
    assert_eq!(&p[0..4], &8u32.to_le_bytes(), "status + 4 bytes");
    assert_eq!(&p[4..8], &0u32.to_le_bytes());
    assert_eq!(&p[8..12], &f.labelled.snapshot()[8..12]);
    let mut r = [0xffu8; 4];
    bell.read(0, &mut r);
    assert_eq!(r, [0; 4]);
}

#[test]
fn smart_reports_the_health_state() {
    let f = fixture();
    f.dsm.set_health(1, Some(HealthState::Critical));
    // DIMM 2 (handle 2) has no labels but health: query offers SMART and its threshold at
    // revision 1, set threshold at revision 2.
    assert_eq!(call(&f, &page_for(2, 1, 0, U, &[])), 0x7u64.to_le_bytes());
    assert_eq!(
        call(&f, &page_for(2, 2, 0, U, &[])),
        (1u64 | 1 << 17).to_le_bytes()
    );
    assert_eq!(call(&f, &page_for(2, 3, 0, U, &[])), 0u64.to_le_bytes());
    let out = call(&f, &page_for(2, 1, 1, U, &[]));
    assert_eq!(out.len(), 4 + SMART_PAYLOAD_LEN);
    assert_eq!(status_of(&out), 0);
    let p = &out[4..];
    assert_eq!(p[8], 1 << 1, "health: critical");
    assert_eq!(p[9], 100, "spares");
    assert_eq!(u16::from_le_bytes([p[12], p[13]]), 400, "25 C in 1/16 C");
    assert_eq!(
        u32::from_le_bytes(p[0..4].try_into().unwrap()) & 1,
        1,
        "health valid"
    );
    // Hostile SMART requests.
    assert_eq!(
        call(&f, &page_for(2, 1, 1, U, &[1, 2, 3])),
        (DsmStatus::InvalidInput as u32).to_le_bytes()
    );
    assert_eq!(
        call(&f, &page_for(2, 2, 1, U, &[])),
        (DsmStatus::Unsupported as u32).to_le_bytes()
    );
    assert_eq!(
        call(&f, &page_for(9, 1, 1, U, &[])),
        (DsmStatus::NoMemoryDevice as u32).to_le_bytes()
    );
    // Labels and health together.
    f.dsm.set_health(0, Some(HealthState::Ok));
    assert_eq!(call(&f, &page_for(1, 1, 0, U, &[])), 0x77u64.to_le_bytes());
    for (s, h) in [
        ("ok", HealthState::Ok),
        ("non-critical", HealthState::NonCritical),
        ("critical", HealthState::Critical),
        ("fatal", HealthState::Fatal),
    ] {
        assert_eq!(s.parse::<HealthState>().unwrap(), h);
        assert_eq!(h.to_string(), s);
    }
    assert_eq!(
        "sick".parse::<HealthState>().unwrap_err().to_string(),
        "health=sick: unknown value; expected ok, non-critical, critical or fatal"
    );
}

#[test]
fn smart_thresholds_and_health_changes_notify_the_guest() {
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let events = Arc::new(crate::nvdimm_events::HealthEvents::new(
        irq.try_clone().unwrap(),
    ));
    let labelled: Arc<dyn LabelStore> = MemStore::new(false, false);
    let dsm = NvdimmDsm::new(vec![Some(labelled), None]).with_health_events(events);
    dsm.set_health(1, Some(HealthState::Ok));
    let bell_call = |page: &[u8]| dsm.call(&DsmRequest::decode(page).unwrap());
    // Get threshold: status + 8 bytes (ndctl's struct nd_intel_smart_threshold is 12).
    let out = bell_call(&page_for(2, 1, 2, U, &[]));
    assert_eq!(out.len(), 12);
    assert_eq!(status_of(&out), 0);
    assert_eq!(&out[4..6], &[0, 0], "no alarm enabled");
    // Set threshold (revision 2): enable every alarm at a media temperature of 20 C, which the
    // DIMM's 25 C crosses: the alarm trips and the guest is notified once.
    let mut set = [0u8; 7];
    set[0] = 0x7;
    set[2] = 10;
    set[3..5].copy_from_slice(&(20u16 * 16).to_le_bytes());
    set[5..7].copy_from_slice(&(80u16 * 16).to_le_bytes());
    let out = bell_call(&page_for(2, 2, 17, U, &set));
    assert_eq!(out, 0u32.to_le_bytes());
    assert_eq!(irq.read().unwrap(), 1);
    let smart = bell_call(&page_for(2, 1, 1, U, &[]));
    assert_eq!(smart[4 + 11], 1 << 1, "media temperature alarm tripped");
    let out = bell_call(&page_for(2, 1, 2, U, &[]));
    assert_eq!(&out[4..11], &set, "thresholds read back as set");
    // Hostile set-threshold requests: wrong revision, short, long, unknown alarm bits, spares
    // past 100 %, on a DIMM without SMART, on no DIMM. None changes anything.
    let before = dsm.smart(1);
    let mut bad_bits = set;
    bad_bits[0] = 0x8;
    let mut bad_spares = set;
    bad_spares[2] = 101;
    for (page, want) in [
        (page_for(2, 1, 17, U, &set), DsmStatus::Unsupported),
        (page_for(2, 2, 17, U, &set[..6]), DsmStatus::InvalidInput),
        (page_for(2, 2, 17, U, &[0; 8]), DsmStatus::InvalidInput),
        (page_for(2, 2, 17, U, &bad_bits), DsmStatus::InvalidInput),
        (page_for(2, 2, 17, U, &bad_spares), DsmStatus::InvalidInput),
        (
            page_declaring(2, 2, 17, U, &set, u32::MAX),
            DsmStatus::InvalidInput,
        ),
        (page_for(2, 1, 2, U, &[1]), DsmStatus::InvalidInput),
        (page_for(1, 2, 17, U, &set), DsmStatus::Unsupported),
        (page_for(3, 2, 17, U, &set), DsmStatus::NoMemoryDevice),
    ] {
        assert_eq!(bell_call(&page), (want as u32).to_le_bytes(), "{want:?}");
    }
    assert_eq!(dsm.smart(1), before);
    assert!(irq.read().is_err(), "no event from refused requests");
    // The API's changes: each real change notifies once; none for no change or an error.
    let critical = SmartUpdate {
        health: Some(HealthState::Critical),
        ..Default::default()
    };
    assert_eq!(
        dsm.update_smart(1, critical).unwrap().health,
        HealthState::Critical
    );
    assert_eq!(irq.read().unwrap(), 1);
    dsm.update_smart(1, critical).unwrap();
    assert!(irq.read().is_err(), "no change, no event");
    assert_eq!(
        dsm.update_smart(
            1,
            SmartUpdate {
                spares: Some(200),
                ..Default::default()
            }
        ),
        Err(SmartError::Value(SmartUpdateError::Spares(200)))
    );
    assert_eq!(dsm.update_smart(0, critical), Err(SmartError::NoSmart(0)));
    assert_eq!(dsm.update_smart(2, critical), Err(SmartError::NoDimm(2)));
    assert!(irq.read().is_err());
    let smart = bell_call(&page_for(2, 1, 1, U, &[]));
    assert_eq!(smart[4 + 8], 1 << 1, "the guest reads the new state");
}
