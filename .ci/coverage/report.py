#!/usr/bin/env python3
"""Line coverage from cargo-tarpaulin's lcov report: a per-file table, the totals for
functions/core and the workspace, and a failing exit status when functions/core is below the
threshold.

Usage: .ci/coverage/report.py LCOV_FILE [--min PERCENT] [--uncovered PATH_SUBSTRING]

--uncovered prints the line numbers no test reached in the files whose path contains the
given text (to find what a new test should exercise).
"""

import argparse
import os
import sys

CORE = "functions/core/src/"


def read_lcov(path):
    """{relative source path: {line: hits}} from an lcov file."""
    root = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
    files = {}
    current = None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("SF:"):
                name = os.path.realpath(line[3:])
                if name.startswith(root + os.sep):
                    name = name[len(root) + 1 :]
                current = files.setdefault(name, {})
            elif line.startswith("DA:") and current is not None:
                number, hits = line[3:].split(",")[:2]
                current[int(number)] = max(current.get(int(number), 0), int(hits))
            elif line == "end_of_record":
                current = None
    return files


def percent(covered, total):
    return 100.0 * covered / total if total else 100.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lcov")
    parser.add_argument("--min", type=float, default=90.0, help="minimum for functions/core (%%)")
    parser.add_argument("--uncovered", action="append", default=[], metavar="PATH_SUBSTRING")
    args = parser.parse_args()

    try:
        files = read_lcov(args.lcov)
    except OSError as e:
        print(f"coverage: cannot read {args.lcov}: {e}", file=sys.stderr)
        return 2
    if not files:
        print(f"coverage: {args.lcov} lists no source files", file=sys.stderr)
        return 2

    width = max(len(name) for name in files)
    print(f"{'file':<{width}}  {'covered':>7}  {'lines':>5}  {'%':>6}")
    totals = {"core": [0, 0], "workspace": [0, 0]}
    for name in sorted(files):
        lines = files[name]
        covered = sum(1 for hits in lines.values() if hits > 0)
        print(f"{name:<{width}}  {covered:>7}  {len(lines):>5}  {percent(covered, len(lines)):>6.2f}")
        groups = ["workspace"] + (["core"] if name.startswith(CORE) else [])
        for group in groups:
            totals[group][0] += covered
            totals[group][1] += len(lines)
    print()
    for group, label in (("core", "functions/core"), ("workspace", "workspace (measured files)")):
        covered, total = totals[group]
        print(f"{label}: {percent(covered, total):.2f}% ({covered}/{total} lines)")

    for wanted in args.uncovered:
        for name in sorted(files):
            if wanted in name:
                missed = sorted(n for n, hits in files[name].items() if hits == 0)
                print(f"uncovered in {name}: {compress(missed) or 'none'}")

    core_covered, core_total = totals["core"]
    if core_total == 0:
        print(f"coverage: no file under {CORE} in the report", file=sys.stderr)
        return 1
    core = percent(core_covered, core_total)
    # Compared at the printed precision, so the message and the verdict agree.
    if round(core, 2) < args.min:
        print(f"coverage: functions/core is {core:.2f}%, below the required {args.min:.1f}%", file=sys.stderr)
        return 1
    print(f"functions/core meets the required {args.min:.1f}%")
    return 0


def compress(numbers):
    """[1, 2, 3, 7] -> '1-3, 7'."""
    ranges = []
    for n in numbers:
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in ranges)


if __name__ == "__main__":
    sys.exit(main())
