#!/usr/bin/env bash
# Installs what building and testing the monitor needs on Debian/Ubuntu, skipping what is
# already there: the kernel source and its build tools, busybox for the guest initramfs,
# QEMU for the nested testbed, ndctl and acpica-tools for cross-checks, curl (the API tests'
# client) and dmsetup (the backing-fault tests' failing block device).
set -euo pipefail

packages=(
  linux-source-6.12 bc flex bison libelf-dev libssl-dev cpio xz-utils make gcc
  busybox-static qemu-system-x86 ndctl acpica-tools e2fsprogs util-linux strace curl dmsetup
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo is missing; install a stable Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi
