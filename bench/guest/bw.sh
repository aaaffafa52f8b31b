#!/bin/sh
# bench guest script (bandwidth phase): sequential mmap copies on the devdax device, on a
# file of an ext4 -o dax filesystem on the fsdax device and on a file in guest RAM (tmpfs),
# RUNS times each.
#   usage: bw.sh BYTES CHUNK PASSES RUNS
P=/bench/bench-probe
bytes=$1 chunk=$2 passes=$3 runs=$4
dax=$(ls /dev/dax* 2>/dev/null | head -n 1)
[ -n "$dax" ] || { echo "bw.sh: no /dev/dax* device"; ls /dev; exit 1; }
[ -b /dev/pmem0 ] || { echo "bw.sh: no /dev/pmem0"; ls /dev; exit 1; }
mkdir -p /mnt/fs
/usr/sbin/mke2fs -q -F -t ext4 -b 4096 -E nodiscard /dev/pmem0 || { echo "bw.sh: mke2fs failed"; exit 1; }
mount -t ext4 -o dax /dev/pmem0 /mnt/fs || { echo "bw.sh: mount -o dax failed"; exit 1; }
grep ' /mnt/fs ' /proc/mounts | grep -q dax || { echo "bw.sh: /mnt/fs is not mounted with dax"; exit 1; }
# KVM counts stage-2 pages per VM, not per device: the host reads the counts at each
# @@STAGE2 case@@ line (bench::stage2), and each device's figures are what its copies added.
# The sleeps give the host time to read them before the next copy starts.
echo "@@STAGE2 start@@"; sleep 2
i=1
while [ "$i" -le "$runs" ]; do
    "$P" bw --tag "bandwidth.guest-devdax.$i" --path "$dax" --bytes "$bytes" --chunk "$chunk" --passes "$passes" || exit 1
    i=$((i + 1))
done
echo "@@STAGE2 guest-devdax@@"; sleep 2
i=1
while [ "$i" -le "$runs" ]; do
    "$P" bw --tag "bandwidth.guest-fsdax.$i" --path /mnt/fs/bw --create --bytes "$bytes" --chunk "$chunk" --passes "$passes" || exit 1
    i=$((i + 1))
done
echo "@@STAGE2 guest-fsdax@@"; sleep 2
umount /mnt/fs
# The same copies on a file in the guest's own RAM (its /tmp, a tmpfs): what any guest memory
# costs against the host here, so the pmem ratios can be read against it. After the last
# @@STAGE2@@ line, so it adds nothing to the devices' stage-2 figures. Its own tmpfs, sized for
# the file: the default (half of RAM, shared with /tmp's other files) is too small and a copy
# past it dies of SIGBUS.
mkdir -p /mnt/ram
mount -t tmpfs -o size=$((bytes / 1048576 + 16))m tmpfs /mnt/ram || { echo "bw.sh: mounting a tmpfs failed"; exit 1; }
i=1
while [ "$i" -le "$runs" ]; do
    "$P" bw --tag "bandwidth.guest-ram.$i" --path /mnt/ram/bw --create --bytes "$bytes" --chunk "$chunk" --passes "$passes" || exit 1
    i=$((i + 1))
done
umount /mnt/ram
