#!/usr/bin/env bash
# Builds the monitor the way it ships: the `dist` profile (fat LTO, one codegen unit) and a
# statically linked executable (no libc.so or ld.so mapped into every monitor process, which is
# most of an idle monitor's resident set). Prints `VMM=<absolute path>` on stdout, nothing else;
# cargo's output goes to stderr. Honours CARGO_TARGET_DIR like any cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."

# `cargo rustc` passes the flag to the vmm binary only, so the build scripts and proc macros of
# the dependencies stay dynamically linked (they cannot be static), and nothing else is rebuilt.
cargo rustc --profile dist -p vmm --bin vmm --message-format=json-render-diagnostics \
    -- -C target-feature=+crt-static |
    python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        sys.stderr.write(line)
        continue
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "vmm" \
            and "bin" in msg["target"]["kind"] and msg.get("executable"):
        exe = msg["executable"]
if exe is None:
    sys.exit("build-vmm.sh: cargo named no vmm executable")
print("VMM=" + exe)
'
