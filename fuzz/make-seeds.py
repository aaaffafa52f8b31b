#!/usr/bin/env python3
"""Writes the committed seed corpus under fuzz/corpus/<target>/ (run from anywhere).

Seeds are small and hand-made: --pmem strings, info blocks from the ndctl vectors in
devices/src/pmem/infoblock/testdata, platform descriptions as raw bytes, device access
sequences as raw bytes, and minimal bzImage and PVH ELF images.
"""
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
VECTORS = os.path.join(ROOT, "..", "devices", "src", "pmem", "infoblock", "testdata", "vectors.txt")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def pmem_option():
    seeds = [
        "path=/dev/dax0.0,memmap=pmem",
        "path=/tmp/pmem0,size=4G",
        "path=d.img,size=64M,readonly=on,id=data,numa=1",
        "path=x,memmap=ram,mode=devdax,align=1G,format=force",
        "path=x,memmap=none,mode=raw,format=keep",
        "path=x,memmap=auto,mode=fsdax,align=4K,format=init",
        "path=x,size=2M,readonly=off",
        "path=,size=",
        "path=x,path=y",
        "size=1T",
    ]
    for i, s in enumerate(seeds):
        put("pmem_option", f"seed-{i:02}", s.encode())


def infoblock():
    n = 0
    with open(VECTORS) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            mode, _map, _align, size, offset, status, prefix, csum = line.split()[:8]
            if status != "ok":
                continue
            block = bytearray(4096)
            p = bytes.fromhex(prefix)
            block[: len(p)] = p
            block[4088:4096] = bytes.fromhex(csum)
            ns = struct.pack("<QQ", int(offset, 16), int(size, 16))
            put("infoblock", f"vector-{n:02}-{mode}", ns + bytes(block))
            n += 1
            if n >= 12:
                break
    put("infoblock", "zeros", bytes(16 + 4096))


def acpi_tables():
    # Platform fields are decoded by `arbitrary`; these byte strings give small, mid-size and
    # NVDIMM-heavy platforms.
    put("acpi_tables", "empty", b"")
    put("acpi_tables", "small", bytes([0, 1, 0, 0, 0, 0xc0, 0xfe, 0, 0]) + bytes(32))
    put("acpi_tables", "nvdimms", bytes(range(256)))
    put("acpi_tables", "numa", bytes([0, 3, 0] + [1, 2, 3, 4, 1, 0, 0, 0, 1, 1] * 20))
    put("acpi_tables", "raw", bytes([1]) + bytes([0xff] * 64))


def devices():
    put("devices", "empty", b"")
    put("devices", "ramp", bytes(range(256)))
    put("devices", "ones", bytes([0xff] * 128))
    put("devices", "mixed", bytes([0, 0, 5, 2, 1, 0x41, 0, 0, 0, 1, 4, 0, 1, 0, 0, 0, 0x80] * 8))


def nvdimm_dsm():
    # Requests are decoded by `arbitrary` (fuzz/src/lib.rs `DsmCall`): handle, revision,
    # function, UUID choice, offset, length, payload. These give reads, writes and hostile
    # mixes; the fuzzer grows the rest.
    put("nvdimm_dsm", "empty", b"")
    put("nvdimm_dsm", "ramp", bytes(range(256)) * 2)
    put("nvdimm_dsm", "ones", bytes([0xff] * 256))
    # handle 1, revision 1, function 5/6, Intel UUID, offset 0, length 16, honest length.
    call = lambda f: bytes([1]) + struct.pack("<I", 1) + bytes([f, 1]) + bytes(16) + \
        struct.pack("<IH", 0, 16) + bytes([1]) + struct.pack("<I", 0)
    put("nvdimm_dsm", "read-write", (call(5) + bytes([0]) + call(6) + bytes([16]) + bytes(range(16))) * 3)


def bzimage():
    # A setup header (boot protocol 2.15, 64-bit entry) over one setup sector and a tiny
    # protected-mode kernel.
    setup_sects = 1
    img = bytearray(512 * (setup_sects + 1) + 4096)
    img[0x1F1] = setup_sects
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020F)  # version
    img[0x211] = 0x01  # loadflags: LOADED_HIGH
    struct.pack_into("<I", img, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", img, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", img, 0x230, 0x200000)  # kernel_alignment
    img[0x234] = 1  # relocatable
    struct.pack_into("<H", img, 0x236, 0x1)  # xloadflags: XLF_KERNEL_64
    struct.pack_into("<I", img, 0x238, 2047)  # cmdline_size
    struct.pack_into("<I", img, 0x260, 0x10000)  # init_size
    return bytes(img)


def pvh_elf():
    # ELF64 with one PT_LOAD at 1 MiB and a PT_NOTE holding XEN_ELFNOTE_PHYS32_ENTRY.
    name = b"Xen\0"
    desc = struct.pack("<I", 0x100000)
    note = struct.pack("<III", len(name), len(desc), 18) + name + desc
    ehdr_size, phdr_size = 64, 56
    phoff = ehdr_size
    note_off = phoff + 2 * phdr_size
    code_off = 0x1000
    code = b"\xf4" * 16  # hlt
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x100000, phoff, 0, 0, ehdr_size, phdr_size, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, code_off, 0x100000, 0x100000, len(code), len(code), 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    img = bytearray(code_off + len(code))
    img[0:64] = ehdr
    img[phoff:phoff + 56] = load
    img[phoff + 56:phoff + 112] = pnote
    img[note_off:note_off + len(note)] = note
    img[code_off:] = code
    return bytes(img)


def kernel_loader():
    put("kernel_loader", "bzimage", bzimage())
    put("kernel_loader", "pvh-elf", pvh_elf())
    old = bytearray(bzimage())
    struct.pack_into("<H", old, 0x206, 0x0206)  # protocol too old
    put("kernel_loader", "bzimage-2.06", bytes(old))
    put("kernel_loader", "elf-header-only", pvh_elf()[:64])


if __name__ == "__main__":
    pmem_option()
    infoblock()
    acpi_tables()
    devices()
    nvdimm_dsm()
    kernel_loader()
