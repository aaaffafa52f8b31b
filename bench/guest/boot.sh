#!/bin/sh
# bench guest script (boot phase): where the guest kernel's boot went, from its own printk
# timestamps (the kernel's clock from its start; `quiet` hides the messages from the console,
# not from dmesg). Prints "@@BENCH dmesg_<milestone>_ms T@@" lines, which bench-probe tags with
# the boot case, then the largest gaps between consecutive messages for a reader of boot.log,
# then @@BOOT-BREAKDOWN-DONE@@, and sleeps (the monitor is killed after its memory is read).
#   milestones: the first message of the CPU set-up (smpboot), ACPI's interpreter, the PCI
#   host bridge, the last message of pmem bring-up (libnvdimm, NFIT or virtio-pmem), the start
#   of init (Run /init).
dmesg | awk '
function ms(line) { s = line; sub(/^\[ */, "", s); sub(/\].*/, "", s); return s * 1000 }
/^\[/ {
    t = ms($0)
    if (cpu == "" && $0 ~ /smpboot: CPU0|Calibrating delay|tsc: Detected/) cpu = t
    if (acpi == "" && $0 ~ /ACPI: Interpreter enabled/) acpi = t
    if (pci == "" && $0 ~ /PCI host bridge to bus/) pci = t
    if ($0 ~ /nd_pmem|nfit|libnvdimm|nd_region|virtio_pmem|pmem[0-9]/) pmem = t
    if (init == "" && $0 ~ /Run \/init as init process/) init = t
    if (n && t - prev > 0) { gap[n] = t - prev; what[n] = $0 }
    prev = t; n++
}
END {
    if (cpu != "") printf "@@BENCH dmesg_cpu_ms %.1f@@\n", cpu
    if (acpi != "") printf "@@BENCH dmesg_acpi_ms %.1f@@\n", acpi
    if (pci != "") printf "@@BENCH dmesg_pci_ms %.1f@@\n", pci
    if (pmem != "") printf "@@BENCH dmesg_pmem_done_ms %.1f@@\n", pmem
    if (init != "") printf "@@BENCH dmesg_init_ms %.1f@@\n", init
    for (k = 0; k < 5; k++) {
        best = 0; bi = 0
        for (i in gap) if (gap[i] > best) { best = gap[i]; bi = i }
        if (!bi) break
        printf "@@DMESG-GAP %.1f ms before: %s@@\n", best, what[bi]
        delete gap[bi]
    }
}'
echo "@@BOOT-BREAKDOWN-DONE@@"
sleep 600
