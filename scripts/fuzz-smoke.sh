#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time (default 20 s each; FUZZ_SECONDS=N to
# change), then checks with `iasl -d` every ACPI blob the committed and the freshly grown
# acpi_tables corpus builds. Exits non-zero on the first finding.
#
# Stable toolchain: cargo-fuzz builds with `--sanitizer none` (libFuzzer's coverage guidance
# needs only stable codegen flags; AddressSanitizer would need nightly, and the code under test
# has no unsafe memory handling of its own that it would add much for). cargo-fuzz is installed
# from crates.io when missing. New inputs go to a scratch corpus; the committed seeds in
# fuzz/corpus/ are only read. Findings are written to fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
targets=(pmem_option infoblock acpi_tables devices kernel_loader nvdimm_dsm)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
if ! command -v iasl >/dev/null; then
    echo "fuzz-smoke: installing acpica-tools (iasl)" >&2
    apt-get install -y acpica-tools >/dev/null
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

cargo fuzz build -s none
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    echo "fuzz-smoke: $t for ${seconds}s" >&2
    cargo fuzz run -s none "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        2>"$scratch/$t.log" || {
        grep -m1 -A8 -e 'panicked' -e 'ERROR: libFuzzer' "$scratch/$t.log" >&2 || true
        tail -n 12 "$scratch/$t.log" >&2
        echo "fuzz-smoke: $t found a problem (input in fuzz/artifacts/$t/)" >&2
        exit 1
    }
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$')
    echo "fuzz-smoke: $t: $runs executions in ${seconds}s ($((runs / seconds))/s)" >&2
done

PMEMVMM_FUZZ_ACPI_CORPUS="$scratch/acpi_tables" \
    cargo test --release --manifest-path fuzz/Cargo.toml -- --nocapture
echo "fuzz-smoke: all ${#targets[@]} targets ran ${seconds}s without a finding" >&2
