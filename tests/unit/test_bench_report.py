"""bench/report.py: the layout both benchmarks print (header notes, results table, errors).

The benches themselves need a server (embedded) or Kafka and Cassandra (distributed); their
shared printing is checked here, to the byte, against the layout they printed before it was shared.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from bench import report


def test_thousands_rounds_to_whole_numbers_with_separators() -> None:
    assert report.thousands(12_345.6) == "12,346"
    assert report.thousands(999.4) == "999"
    assert report.thousands(0) == "0"
    assert report.thousands(1_000_000) == "1,000,000"


def test_loadavg_has_two_decimals_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 1.234, 10.0))
    assert report.loadavg() == "0.50 1.23 10.00"


def test_render_rows_pads_labels_and_right_aligns_values_in_one_width() -> None:
    rows = [
        ("round", ["1", "2", "median"]),
        ("events/s", ["12,346", "9,001", "10,674"]),
        ("ok", ["", "", ""]),
    ]
    assert report.render_rows(rows, min_width=8).split("\n") == [
        "round            1         2    median",
        "events/s    12,346     9,001    10,674",
        "ok                                    ",
    ]


def test_render_rows_widens_every_column_to_the_widest_value() -> None:
    rows = [("a", ["12.53 / 22.11"]), ("longer label", ["1"])]
    assert report.render_rows(rows, min_width=4) == "a             12.53 / 22.11\nlonger label              1"


def test_render_rows_matches_the_layout_the_benches_printed_before() -> None:
    rows = [("queued tasks", ["2,000", "5,000"]), ("rebuild checksum", ["MATCH", "MISMATCH"])]
    for min_width in (10, 12):
        label_w = max(len(label) for label, _ in rows)
        col_w = max(min_width, *(len(v) for _, vals in rows for v in vals))
        before = "\n".join(
            f"{label:<{label_w}}  " + "  ".join(f"{v:>{col_w}}" for v in vals) for label, vals in rows
        )
        assert report.render_rows(rows, min_width=min_width) == before


def test_render_header_lists_notes_then_load_average_and_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 2.0, 3.0))
    monkeypatch.setattr(time, "perf_counter", lambda: 142.6)
    text = report.render_header(
        "Labelweave embedded benchmark (python -m bench.embedded)",
        [("date", "2026-01-05 09:00 UTC"), ("protobuf", "7.0"), ("phases", "3 s each")],
        started=100.0,
    )
    assert text.split("\n") == [
        "Labelweave embedded benchmark (python -m bench.embedded)",
        "  date      2026-01-05 09:00 UTC",
        "  protobuf  7.0",
        "  phases    3 s each",
        "  load avg  1.00 2.00 3.00 at the end; total run 43 s",
    ]


def test_render_errors_indents_each_error_under_a_heading() -> None:
    assert report.render_errors(["[2,000] checksum MISMATCH", "OSError: disk full"]) == (
        "ERRORS:\n  [2,000] checksum MISMATCH\n  OSError: disk full"
    )


def test_host_notes_come_first_in_a_fixed_order() -> None:
    notes = report.host_notes()
    assert list(notes) == ["date", "cpus", "memory", "kernel", "python"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", notes["date"])
    assert re.fullmatch(r"\d+ x .+", notes["cpus"])
    assert notes["memory"] == "unknown" or notes["memory"].endswith(" GiB")


def test_say_writes_a_timestamped_line_to_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    report.say("round 1/3: building 50,000 events")
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(r"\d\d:\d\d:\d\d round 1/3: building 50,000 events\n", err)
