"""Fold a `perf record --call-graph dwarf` profile of the worker into stacks and summarise where the CPU went.

    .venv/bin/python bench/profile.py PERF_DATA --folded OUT.folded --summary OUT.md [--orders N]

`perf script` (no inlined frames: resolving them from line tables takes minutes) gives each sample's stack;
each is folded root first into one line `frame;frame;...;leaf count` (the format flame graph tools read:
`inferno-flamegraph < OUT.folded > OUT.svg`). The summary lists the top frames by self time (the leaf) and by
total time (anywhere on the stack, counted once per sample), and self time by crate, each as a share of all
samples; with --orders, also as CPU milliseconds per 1,000 orders (samples x the sampling period).
See bench/README.md, "Profiling the worker".
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

# A Rust symbol's hash suffix, and the argument lists and offsets perf prints.
HASH = re.compile(r"::h[0-9a-f]{16}$")
OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def frame_name(sym: str, dso: str, binary: str) -> str | None:
    """A frame as the stacks show it: Rust paths without their hash, kernel frames marked `[k]`, a shared
    library's frames suffixed with the library (`malloc [libc.so.6]`); None for a frame perf could not name."""
    sym = HASH.sub("", OFFSET.sub("", sym.strip()))
    if sym in ("[unknown]", ""):
        return None
    if dso.startswith("[kernel"):
        return f"[k] {sym}"
    lib = Path(dso).name
    return sym if not lib or lib == binary else f"{sym} [{lib}]"


def fold(perf_data: Path, binary: str) -> tuple[collections.Counter, int, float]:
    """Stacks (root first, ';'-joined) -> samples; the number of samples; the sampling period in seconds."""
    cmd = ["perf", "script", "-i", str(perf_data), "--no-inline", "-F", "comm,tid,time,ip,sym,dso"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    stacks: collections.Counter = collections.Counter()
    frames: list[str] = []
    in_sample = False
    total = 0

    def flush():
        nonlocal total
        if in_sample:
            stacks[";".join(reversed(frames)) or "[unknown]"] += 1
            total += 1

    for line in out.splitlines():
        if not line.strip():
            flush()
            frames, in_sample = [], False
            continue
        if not line.startswith((" ", "\t")):
            flush()
            frames, in_sample = [], True
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        m = re.match(r"(.*) \((.*)\)$", rest)
        sym, dso = (m.group(1), m.group(2)) if m else (rest, "")
        name = frame_name(sym, dso, binary)
        if name:
            frames.append(name)
    flush()
    return stacks, total, sampling_period(perf_data)


def sampling_period(perf_data: Path) -> float:
    """1 / the sampling frequency perf recorded with (`-F`), from the header; 0 when not found."""
    out = subprocess.run(
        ["perf", "report", "-i", str(perf_data), "--header-only"], check=False, capture_output=True, text=True
    ).stdout
    m = re.search(r"sample_freq \}? ?= (\d+)", out)
    return 1.0 / int(m.group(1)) if m and int(m.group(1)) else 0.0


def crate_of(frame: str) -> str:
    if frame.startswith("[k]"):
        return "kernel"
    if frame.endswith("]") and " [" in frame:
        return frame.rsplit(" [", 1)[1][:-1]  # a shared library
    name = frame.lstrip("<").split("::", 1)[0]
    name = name.split(" as ", 1)[0]
    return name or frame


def owner_of(frames: list[str]) -> str:
    """The worker's own innermost function on the stack (what the SDK, tokio or libc below it worked for), or
    what the sample was doing outside the worker's code."""
    ours = [f for f in frames if f.startswith(("order_worker::", "<order_worker::"))]
    if ours:
        return ours[-1]
    if any(f.startswith("hyper::proto::h1::dispatch::Dispatcher") for f in frames):
        return "(hyper's connection task: sending and reading every AWS call)"
    if any("park" in f for f in frames):
        return "(tokio: a worker thread parking, waking, waiting on epoll)"
    return "(other: runtime, SDK tasks without a worker frame, unwinding cut short)"


def summary(stacks: collections.Counter, total: int, period: float, orders: int | None, top: int) -> str:
    selfs: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    crates: collections.Counter = collections.Counter()
    owners: collections.Counter = collections.Counter()
    for stack, n in stacks.items():
        frames = stack.split(";")
        selfs[frames[-1]] += n
        crates[crate_of(frames[-1])] += n
        owners[owner_of(frames)] += n
        for f in set(frames):
            incl[f] += n

    def per_k(n: int) -> str:
        if not orders or not period:
            return "-"
        return f"{n * period / orders * 1e6:.1f}"

    def rows(counter, k):
        return "\n".join(f"| {100 * n / total:5.1f} | {per_k(n)} | `{f[:160]}` |" for f, n in counter.most_common(k))

    head = "| % of samples | ms / 1,000 orders | frame |\n|---|---|---|"
    cpu = f"{total * period:.2f} s sampled" if period else "period unknown"
    return "\n".join(
        [
            f"{total} samples ({cpu}" + (f", {orders} orders" if orders else "") + ")",
            "",
            "#### By the worker's own innermost function on the stack",
            "",
            head.replace("frame", "function"),
            rows(owners, 25),
            "",
            "#### Self time by crate (the leaf frame's)",
            "",
            head.replace("frame", "crate"),
            rows(crates, 25),
            "",
            f"#### Top {top} frames by self time",
            "",
            head,
            rows(selfs, top),
            "",
            f"#### Top {top} frames by total time (anywhere on the stack)",
            "",
            head,
            rows(incl, top),
            "",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("perf_data", type=Path)
    ap.add_argument("--folded", type=Path, help="write the folded stacks here")
    ap.add_argument("--summary", type=Path, help="write the summary (markdown) here; default: print it")
    ap.add_argument("--orders", type=int, help="orders the profiled drain handled (for ms per 1,000 orders)")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--binary", default="order-worker", help="the profiled binary's file name")
    args = ap.parse_args()
    stacks, total, period = fold(args.perf_data, args.binary)
    if not total:
        print(f"{args.perf_data}: no samples", file=sys.stderr)
        return 1
    if args.folded:
        args.folded.write_text("".join(f"{s} {n}\n" for s, n in stacks.most_common()))
    text = summary(stacks, total, period, args.orders, args.top)
    if args.summary:
        args.summary.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
