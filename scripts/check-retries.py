#!/usr/bin/env python3
"""Fails the suite if a test passed only on a retry, unless its first failure was one of the five
nested-testbed failures a retry forgives.

nextest retries the nested tests once (.config/nextest.toml). Forgiven, and printed: the nested
L1 host crashed (QEMU TCG's emulation of the machine the monitor runs on oopsed or triple-faulted
that machine's kernel); a kernel crashed inside a nested host (an oops, panic or triple fault of
a guest: the same QEMU TCG nested-SVM defect, which crashes guests of cloud-hypervisor in the
same way; tests/README.md, "The nested guest crash"); a nested run was stopped (timeout or
watchdog) before any guest had reached init (an early-boot hang under TCG that a retry does not
repeat); or a stopped nested run's L1 CPU was halted with interrupts enabled while its local APIC
held a deliverable vector, as QEMU's monitor showed (the emulated CPU stopped taking interrupts;
tests/README.md, "L1 stops taking interrupts"); or the monitor reported a guest's COM1 interrupt
accepted by its local APIC and never completed, or requested for seconds and never accepted,
while the guest ran on (its console output never came: an interrupt lost on its way into the
guest's CPU; tests/README.md, "Console output that never came"). A deterministic failure fails both tries. Every
other first failure (the monitor, a guest that came up and then failed without crashing, a
test's assertion) still fails the suite here, after the retry has shown whether it recurs. Direct
runs (hardware KVM) never print these markers, so nothing is forgiven there.

Usage: check-retries.py JUNIT.xml... ; prints every retried test with its first failure's reason.
"""
import sys
import xml.etree.ElementTree as ET

# tests/src/error.rs L1_CRASH_MARKER, GUEST_CRASH_MARKER, EARLY_HANG_MARKER, L1_STUCK_MARKER and
# LOST_INTERRUPT_MARKER.
L1_CRASH_MARKER = "testbed: the nested L1 host crashed"
GUEST_CRASH_MARKER = "testbed: a kernel crashed in the nested host"
EARLY_HANG_MARKER = "testbed: stopped before any guest reached init (nested)"
L1_STUCK_MARKER = "testbed: the nested L1 host stopped taking interrupts"
LOST_INTERRUPT_MARKER = "testbed: the nested host lost a guest's interrupt"
FORGIVEN = (
    L1_CRASH_MARKER,
    GUEST_CRASH_MARKER,
    EARLY_HANG_MARKER,
    L1_STUCK_MARKER,
    LOST_INTERRUPT_MARKER,
)
RETRIED = ("flakyFailure", "flakyError", "rerunFailure", "rerunError")


def first_line_with(text, needle):
    for line in text.splitlines():
        if needle in line:
            return line.strip()
    return None


def main(paths):
    unforgiven = 0
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as e:
            print(f"check-retries: cannot read {path}: {e}", file=sys.stderr)
            return 1
        for case in root.iter("testcase"):
            name = f"{case.get('classname')} {case.get('name')}"
            passed = case.find("failure") is None and case.find("error") is None
            for tag in RETRIED:
                for attempt in case.findall(tag):
                    text = (attempt.text or "") + "".join(
                        (child.text or "") for child in attempt
                    )
                    crash = next((l for m in FORGIVEN if (l := first_line_with(text, m))), None)
                    if crash and passed:
                        print(f"check-retries: {name}: retried after a nested-testbed failure, then passed: {crash}")
                    elif passed:
                        unforgiven += 1
                        reason = attempt.get("message") or "no message"
                        print(f"check-retries: {name}: FAILED first, passed on retry, and the first "
                              f"failure was not a forgiven nested-testbed failure: {reason}")
    if unforgiven:
        print(f"check-retries: {unforgiven} test(s) passed only on a retry; see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
