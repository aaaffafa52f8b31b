#!/usr/bin/env bash
# Runs every test on a fresh machine: installs missing packages, builds (and caches) the guest
# kernel, fetches (and caches) the stock guest kernel, checks formatting and lints, then runs the
# whole suite with cargo-nextest (every test binary to the end, no fail-fast) and prints each
# binary's and each test's wall time.
# Integration tests boot real guests on KVM, directly or in the nested testbed (see the README,
# PMEMVMM_TESTBED). Extra arguments go to `cargo nextest run` (e.g. a filter expression).
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
phase() { echo "[test.sh] $* (+$(( $(date +%s) - started )) s)" >&2; }

phase "installing dependencies"
scripts/install-deps.sh
phase "building the guest kernel"
# Build the kernel up front so its log is readable on its own and tests only find it cached.
guest-kernel/build.sh >/dev/null
phase "fetching the stock guest kernel"
# Debian's linux-image-amd64 for tests/tests/stock_kernel.rs (a ~70 MB download, then cached).
guest-kernel/stock.sh >/dev/null
phase "checking format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
phase "building"
# The monitor as it ships (dist profile, static); every test process uses this binary instead of
# building it again.
eval "$(scripts/build-vmm.sh)"
PMEMVMM_VMM="$VMM"
export PMEMVMM_VMM

rc=0
if cargo nextest --version >/dev/null 2>&1; then
    rm -f target/nextest/ci/junit.xml target/nextest/ci-long/junit.xml
    # The long matrices run second, so every quick result is in before them.
    for profile in ci ci-long; do
        phase "running tests (cargo nextest, profile $profile)"
        cargo nextest run --workspace --release --profile "$profile" "$@" || rc=$?
    done
    # nextest does not run doctests.
    phase "running doctests"
    cargo test --workspace --release --doc || rc=$?
    python3 scripts/test-times.py target/nextest/ci/junit.xml target/nextest/ci-long/junit.xml \
        || true
    # A test that passed only on its retry fails the suite unless L1 (not the monitor) crashed.
    python3 scripts/check-retries.py target/nextest/ci/junit.xml target/nextest/ci-long/junit.xml \
        || rc=1
else
    phase "running tests (cargo test; install cargo-nextest for per-test times)"
    cargo test --workspace --release --no-fail-fast -- "$@" || rc=$?
fi
phase "done, exit $rc"
exit "$rc"
