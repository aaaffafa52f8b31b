#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build the guest kernel (cached),
# the initramfs and the monitor, then boot a guest with a 1 GiB persistent memory device
# whose memmap lives in the device itself (memmap=pmem), and show what the guest made of it.
# Runs on this host's KVM when it can boot stock guests, otherwise inside the nested testbed
# (PMEMVMM_TESTBED=auto|direct|nested). Extra arguments go to the guest as its command.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
guest-kernel/build.sh >/dev/null
if [[ -z "${PMEMVMM_VMM:-}" ]]; then
  eval "$(scripts/build-vmm.sh)"
  export PMEMVMM_VMM="$VMM"
fi
cargo build --release -p testbed --example run-guest

command=("$@")
if ((${#command[@]} == 0)); then
  # One kernel command-line word: no double quotes or newlines inside.
  command=("echo; echo '== /proc/iomem'; grep -i persistent /proc/iomem;"
    "echo '== namespace0.0 (mode, size)'; cat /sys/bus/nd/devices/namespace0.0/mode /sys/bus/nd/devices/namespace0.0/size;"
    "h=\$(cat /sys/bus/nd/devices/namespace0.0/holder);"
    "echo '== memmap location and data size of' \$h; cat /sys/bus/nd/devices/\$h/mode /sys/bus/nd/devices/\$h/size;"
    "echo '== /dev/pmem0'; ls -l /dev/pmem0; cat /sys/block/pmem0/queue/dax;"
    "echo '== memory'; grep -E 'MemTotal|MemFree' /proc/meminfo")
fi

exec cargo run --release -q -p testbed --example run-guest -- \
  --cpus 2 --memory 512M \
  --vmm-arg --pmem --vmm-arg "path=demo.pmem,size=1G,memmap=pmem" \
  -- "${command[*]}"
