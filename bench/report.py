"""How the benchmarks print their results: one layout for `bench.embedded` and `bench.distributed`.

Both reports have the same shape, so that docs/benchmarks.md can quote either and a reader who
knows one can read the other: a title and `key  value` notes on the machine and the run, a table
of one label column and one right-aligned column per size or round, the targets, and any errors.
Progress goes to stderr with a timestamp; stdout carries the report only. What each bench
measures, and how its targets are laid out, stays in its own module.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

NOTE_KEY_WIDTH = 9
"""`  key      value`: the keys of the header notes are padded to this width (`load avg`, `workload`)."""


def say(msg: str) -> None:
    """A progress line on stderr, prefixed with the wall-clock time."""
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, e.g. `0.52 0.31 0.20`."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def thousands(x: float) -> str:
    """A rate or a count, rounded to a whole number with thousands separators: `12,346`."""
    return f"{x:,.0f}"


def host_notes() -> dict[str, str]:
    """The machine the numbers come from (date, CPUs, memory, kernel, Python); each bench adds the
    versions of what it drives."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} x {cpu}",
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def render_header(title: str, notes: Iterable[tuple[str, str]], started: float) -> str:
    """The title, one indented `key  value` line per note, then the load average now and the run's
    wall time since `started` (a `time.perf_counter()` reading)."""
    lines = [title]
    lines += [f"  {key:<{NOTE_KEY_WIDTH}} {value}" for key, value in notes]
    ended = f"{loadavg()} at the end; total run {time.perf_counter() - started:.0f} s"
    lines.append(f"  {'load avg':<{NOTE_KEY_WIDTH}} {ended}")
    return "\n".join(lines)


def render_rows(rows: Sequence[tuple[str, Sequence[str]]], min_width: int) -> str:
    """One line per (label, values): the label left-aligned to the longest label, then two spaces
    between values right-aligned in columns of one width, the widest value's or `min_width`."""
    label_w = max(len(label) for label, _ in rows)
    col_w = max([min_width, *(len(v) for _, vals in rows for v in vals)])
    return "\n".join(
        f"{label:<{label_w}}  " + "  ".join(f"{v:>{col_w}}" for v in vals) for label, vals in rows
    )


def render_errors(errors: Sequence[str]) -> str:
    """`ERRORS:` and one indented line per error."""
    return "\n".join(["ERRORS:", *(f"  {e}" for e in errors)])
