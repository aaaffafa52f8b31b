#!/usr/bin/env bash
# Runs the same nested tests many times in a row, without retries, and prints one line per
# round (pass/fail, wall time, stall or timeout lines seen) and a summary: the volume runs of
# issue 15 ("10 consecutive runs of the pfn checker and memmap policy tests on an idle machine,
# and 10 with a CPU hog beside them").
#
#   scripts/volume-runs.sh [--rounds N] [--hog] [--test NAME]... [--long]
#
# --test NAME   a test binary of package testbed (default: pfn_checker and memmap_policy)
# --long        also run the ci-long profile (the 16 GiB pfn-checker matrix) each round
# --hog         one busy-looping process per online CPU beside the tests, for the whole run
# Logs: target/volume/<UTC time>/round-N.log. Exit status 1 when any round failed.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=10
hog=0
long=0
tests=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --hog) hog=1; shift ;;
        --long) long=1; shift ;;
        --test) tests+=("$2"); shift 2 ;;
        *) echo "volume-runs: unknown argument '$1' (see the comment at the top)" >&2; exit 2 ;;
    esac
done
[[ ${#tests[@]} -gt 0 ]] || tests=(pfn_checker memmap_policy)
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "volume-runs: --rounds takes a positive number, got '$rounds'" >&2; exit 2; }

out="target/volume/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
test_args=()
for t in "${tests[@]}"; do test_args+=(--test "$t"); done

eval "$(scripts/build-vmm.sh)"
export PMEMVMM_VMM="$VMM"
cargo nextest run --release -p testbed "${test_args[@]}" --no-run >/dev/null

hogs=()
stop_hogs() { [[ ${#hogs[@]} -eq 0 ]] || kill "${hogs[@]}" 2>/dev/null || true; }
trap stop_hogs EXIT
if [[ $hog == 1 ]]; then
    for _ in $(seq "$(nproc)"); do (while :; do :; done) & hogs+=($!); done
fi

failed=0
echo "volume-runs: $rounds rounds of ${tests[*]}$([[ $long == 1 ]] && echo ' + ci-long'), hog=$hog, logs in $out"
for r in $(seq 1 "$rounds"); do
    log="$out/round-$r.log"
    start=$(date +%s)
    status=pass
    cargo nextest run --release -p testbed --profile ci "${test_args[@]}" --retries 0 --no-fail-fast \
        >"$log" 2>&1 || status=FAIL
    if [[ $long == 1 ]]; then
        cargo nextest run --release -p testbed --profile ci-long --retries 0 --no-fail-fast \
            >>"$log" 2>&1 || status=FAIL
    fi
    secs=$(( $(date +%s) - start ))
    stalls=$(grep -c -E 'self-detected stall|timer wakeup didn.t happen|testbed: .*(stall|silent)' "$log" || true)
    passed=$(grep -c -E '^\s+PASS \[' "$log" || true)
    fails=$(grep -c -E '^\s+(FAIL|TIMEOUT) \[' "$log" || true)
    [[ $status == pass ]] || failed=$((failed + 1))
    printf 'round %2d  %-4s  %5d s  %3d passed  %2d failed  %2d stall lines  load %s\n' \
        "$r" "$status" "$secs" "$passed" "$fails" "$stalls" "$(cut -d' ' -f1-3 /proc/loadavg)"
done
echo "volume-runs: $((rounds - failed)) of $rounds rounds passed"
[[ $failed == 0 ]]
