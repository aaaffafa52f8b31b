#!/usr/bin/env python3
"""Prints per-binary and per-test wall times from cargo-nextest's JUnit reports.

Usage: scripts/test-times.py target/nextest/ci/junit.xml [more reports...] (missing ones skipped)
A test binary's figure is the sum of its tests' times (nextest runs tests of one binary in
parallel, so the wall time of the whole run is the better total; it is printed last).
"""
import os
import sys
import xml.etree.ElementTree as ET


def main(paths: list) -> int:
    binaries = []
    tests = []
    wall = 0.0
    for path in paths:
        if not os.path.exists(path):
            continue
        root = ET.parse(path).getroot()
        wall += float(root.get("time") or 0)
        read_suites(root, binaries, tests)
    report(binaries, tests, wall)
    return 0


def read_suites(root, binaries, tests):
    for suite in root.iter("testsuite"):
        name = suite.get("name", "?")
        total = 0.0
        count = 0
        for case in suite.iter("testcase"):
            t = float(case.get("time", "0") or 0)
            failed = case.find("failure") is not None or case.find("error") is not None
            tests.append((t, name, case.get("name", "?"), failed))
            total += t
            count += 1
        binaries.append((total, name, count))


def report(binaries, tests, wall):
    merged = {}
    for total, name, count in binaries:
        t, c = merged.get(name, (0.0, 0))
        merged[name] = (t + total, c + count)
    print("\n== test wall times per binary (sum of its tests) ==")
    for total, name, count in sorted(((t, n, c) for n, (t, c) in merged.items()), reverse=True):
        print(f"{total:9.1f} s  {count:4d} tests  {name}")
    print("\n== slowest tests ==")
    for t, suite, case, failed in sorted(tests, reverse=True)[:40]:
        mark = "  FAILED" if failed else ""
        print(f"{t:9.1f} s  {suite} {case}{mark}")
    print(f"\nnextest runs: {wall:.1f} s for {len(tests)} tests")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
