#!/usr/bin/env python3
"""Fails the suite if a test passed only on a retry for any reason but a crash of the nested L1 host.

nextest retries the nested tests once (.config/nextest.toml): QEMU's TCG emulation of the machine
the monitor runs on, rarely, crashes that machine's own kernel (L1) mid-run, and that says nothing
about the monitor. Every other first failure (the monitor, its guest, a test's assertion, a
watchdog stop) still fails the suite here, after the retry has shown whether it recurs.

Usage: check-retries.py JUNIT.xml... ; prints every retried test with its first failure's reason.
"""
import sys
import xml.etree.ElementTree as ET

# tests/src/error.rs L1_CRASH_MARKER: the text every L1 crash error starts with.
L1_CRASH_MARKER = "testbed: the nested L1 host crashed"
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
                    crash = first_line_with(text, L1_CRASH_MARKER)
                    if crash and passed:
                        print(f"check-retries: {name}: retried after an L1 crash, then passed: {crash}")
                    elif passed:
                        unforgiven += 1
                        reason = attempt.get("message") or "no message"
                        print(f"check-retries: {name}: FAILED first, passed on retry, and the first "
                              f"failure was not an L1 crash: {reason}")
    if unforgiven:
        print(f"check-retries: {unforgiven} test(s) passed only on a retry; see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
