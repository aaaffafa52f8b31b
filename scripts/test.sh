#!/usr/bin/env bash
# Runs every test on a fresh machine: installs missing packages, builds (and caches) the guest
# kernel, then runs the whole cargo test suite. Integration tests boot real guests on KVM,
# directly or in the nested testbed (see the README, PMEMVMM_TESTBED).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# Build the kernel up front so its log is readable on its own and tests only find it cached.
guest-kernel/build.sh >/dev/null
cargo build --release -p vmm
cargo test --workspace --release -- "$@"
