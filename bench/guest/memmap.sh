#!/bin/sh
# bench guest script (memmap phase): time the bring-up of the one pmem namespace and the guest
# RAM it takes. The namespace came up during boot; we unbind its device from its libnvdimm
# driver (which frees a memmap kept in RAM), read MemFree, bind it again with the time of that
# one sysfs write measured by bench-probe, and read MemFree again.
#   @@BENCH bringup_ms <ms>@@      time of the bind (what the guest does at boot for it)
#   @@BENCH ram_cost_kib <kib>@@   free memory before minus after (caches dropped both times)
P=/bench/bench-probe
drv="" dev=""
for d in nd_pmem dax_pmem; do
    for l in /sys/bus/nd/drivers/$d/*; do
        n=${l##*/}
        case "$n" in
            namespace0.*|pfn0.*|dax0.*) drv=$d dev=$n ;;
        esac
    done
done
if [ -z "$dev" ]; then
    echo "memmap.sh: no device of region0 is bound to nd_pmem or dax_pmem"
    ls /sys/bus/nd/devices /sys/bus/nd/drivers/nd_pmem /sys/bus/nd/drivers/dax_pmem 2>&1
    exit 1
fi
D=/sys/bus/nd/drivers/$drv
echo "@@BENCH-INFO - device $drv/$dev@@"
# Free KiB: MemFree plus the pages parked on the per-CPU free lists, which MemFree leaves out
# (what the unbind freed may sit there).
memfree() {
    m=$(awk '/^MemFree:/ { print $2 }' /proc/meminfo)
    p=$(awk '$1 == "count:" { s += $2 } END { print s * 4 }' /proc/zoneinfo)
    echo $((m + p))
}
settle() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 0.3; }
echo "$dev" >"$D/unbind" || { echo "memmap.sh: unbinding $dev failed"; exit 1; }
settle
before=$(memfree)
us=$("$P" write-time "$D/bind" "$dev") || { echo "memmap.sh: binding $dev failed"; exit 1; }
[ -e "$D/$dev" ] || { echo "memmap.sh: $dev is not bound after the bind"; exit 1; }
settle
after=$(memfree)
echo "@@BENCH bringup_ms $(awk "BEGIN { print $us / 1000 }")@@"
echo "@@BENCH ram_cost_kib $((before - after))@@"
