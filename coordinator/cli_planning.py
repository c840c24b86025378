"""CLI commands of the manager views (docs/planning-and-dashboards.md):

    labelweave coverage PROJECT [--start 2026-10-25T00:00:00Z] [--hours 24]
    labelweave sla PROJECT [--limit 100] [--all]
    labelweave dashboard PROJECT [--person ID | --team NAME] [--window 24]
    labelweave bottlenecks PROJECT [--window 24]
    labelweave forecast PROJECT [--window 24] [--horizon 336]

Each prints a readable table (`--json` prints the response as JSON instead).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from coordinator.errors import InvalidArgument

Handler = Callable[[argparse.Namespace], int]


def _when(ts: Timestamp, present: bool = True) -> str:
    if not present:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, a rule under the header."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _client(args: argparse.Namespace) -> Any:
    from coordinator.cli import _client as make

    return make(args)


def _json(args: argparse.Namespace, message: Any) -> bool:
    if not args.json:
        return False
    from coordinator.cli import _print_json

    _print_json(message)
    return True


def _parse_start(text: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{text!r} is not an ISO 8601 instant", field="--start") from None
    if value.tzinfo is None:
        raise InvalidArgument("needs a UTC offset (e.g. 2026-10-25T00:00:00Z)", field="--start")
    return value


def cmd_coverage(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        res = lw.get_coverage(args.project_id, start=_parse_start(args.start), hours=args.hours)
    if _json(args, res):
        return 0
    print(f"required skills: {', '.join(res.required_skills) or '-'}")
    rows: list[list[object]] = []
    for hour in res.hours:
        zones = "; ".join(f"{z.time_zone} {len(z.person_ids)} ({z.capacity:.1f}/h)" for z in hour.zones)
        rows.append(
            [
                _when(hour.hour_start),
                hour.people,
                hour.capacity,
                zones or "-",
                ", ".join(hour.skills_missing) or "-",
            ]
        )
    print(table(["hour (UTC)", "people", "capacity/h", "time zones", "skills missing"], rows))
    return 0


def cmd_sla(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        res = lw.list_sla_risks(
            args.project_id, limit=args.limit, page_token=args.page_token, include_safe=args.all
        )
    if _json(args, res):
        return 0
    print(f"{res.at_risk_total} of {res.tasks_planned} tasks with a deadline are at risk")
    rows = [
        [
            r.task_id,
            _when(r.deadline),
            r.remaining_slots,
            r.needed_hours,
            r.available_hours,
            _when(r.earliest_completion, r.HasField("earliest_completion")),
            "AT RISK" if r.at_risk else "ok",
        ]
        for r in res.risks
    ]
    print(table(["task", "deadline", "slots", "needed h", "available h", "earliest completion", ""], rows))
    if res.next_page_token:
        print(f"more: --page-token {res.next_page_token}")
    return 0


def _board_row(board: Any) -> list[object]:
    reasons = ", ".join(f"{r.code} {r.rate:.0%}" for r in board.rejections) or "-"
    return [
        board.person_id or "(team)",
        board.submitted,
        board.accepted,
        board.submitted_per_hour,
        f"{board.gold_accuracy:.0%}" if board.accuracy_known else "unknown",
        f"{board.rejection_rate:.0%}",
        reasons,
        board.mean_seconds_on_task,
    ]


def cmd_dashboard(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        res = lw.get_dashboard(
            args.project_id, person_id=args.person or "", team=args.team or "", window_hours=args.window
        )
    if _json(args, res):
        return 0
    who = f"team {res.team}" if res.team else res.person_id
    print(f"{who} in {res.project_id}, last {res.window_hours} h")
    rows = [_board_row(b) for b in res.members] + [_board_row(res.totals)]
    print(
        table(
            [
                "person",
                "submitted",
                "accepted",
                "submitted/h",
                "gold accuracy",
                "rejected",
                "reasons",
                "s/task",
            ],
            rows,
        )
    )
    print(f"agreement: {res.agreement_json if res.agreement_known else 'unknown'}")
    busy = [h for h in res.totals.hourly if h.submitted or h.accepted or h.reviewed]
    if busy:
        print()
        print(
            table(
                ["hour (UTC)", "submitted", "accepted", "reviewed"],
                [[_when(h.hour_start), h.submitted, h.accepted, h.reviewed] for h in busy],
            )
        )
    return 0


def cmd_bottlenecks(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        res = lw.get_bottlenecks(args.project_id, window_hours=args.window)
    if _json(args, res):
        return 0
    rows = [
        [
            s.stage,
            s.depth,
            f"{s.oldest_age_seconds / 3600:.1f} h" if s.HasField("oldest") else "-",
            s.inflow,
            s.outflow,
            "<- bottleneck" if s.bottleneck else "",
        ]
        for s in res.stages
    ]
    print(table(["stage", "depth", "oldest", f"in ({res.window_hours} h)", "out", ""], rows))
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        res = lw.forecast_completion(args.project_id, window_hours=args.window, horizon_hours=args.horizon)
    if _json(args, res):
        return 0
    print(
        f"remaining work {res.remaining_work:.1f} (open slots {res.open_slots}, review backlog "
        f"{res.review_backlog}, future reviews {res.future_reviews:.1f}); basis: {res.basis}"
    )
    print(
        table(
            ["time zone", "workers", "done", "on-shift h", "rate/h"],
            [[z.time_zone, z.workers, z.done, z.on_shift_hours, z.rate_per_hour] for z in res.zones],
        )
    )
    if not res.within_horizon:
        print(f"not within the horizon ({res.horizon_hours} h)")
    print(
        f"expected {_when(res.expected, res.HasField('expected'))}, optimistic "
        f"{_when(res.optimistic, res.HasField('optimistic'))}, pessimistic "
        f"{_when(res.pessimistic, res.HasField('pessimistic'))} (UTC; band ±{res.spread:.0%})"
    )
    return 0


def add_commands(
    command: Callable[..., argparse.ArgumentParser], sub: Any, client: argparse.ArgumentParser
) -> None:
    """Register the commands on the top-level subparsers (`command` is cli.build_parser's helper,
    `client` its connection-flags parent parser)."""

    def base(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = command(sub, name, handler, help_, parents=[client])
        p.add_argument("project_id", metavar="PROJECT")
        p.add_argument("--json", action="store_true", help="print the response as JSON")
        return p

    p = base("coverage", cmd_coverage, "who is on shift per UTC hour and time zone, skills covered")
    p.add_argument("--start", default="", help="ISO 8601 instant (default: now)")
    p.add_argument("--hours", type=int, default=0, help="hours to project (default: 24)")
    p = base("sla", cmd_sla, "tasks whose deadline the capacity on shift cannot meet")
    p.add_argument("--limit", type=int, default=0, help="tasks per page (default: 100)")
    p.add_argument("--all", action="store_true", help="list tasks that will make it too")
    p.add_argument("--page-token", default="", help="continue after the previous page")
    p = base("dashboard", cmd_dashboard, "throughput, accuracy, rejections, time on task")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--person", default=None, help="person id (default: yourself)")
    who.add_argument("--team", default=None, help="team name")
    p.add_argument("--window", type=int, default=0, help="hours (default: 24)")
    p = base("bottlenecks", cmd_bottlenecks, "depth, age and flows per stage; the stage that grows")
    p.add_argument("--window", type=int, default=0, help="hours (default: 24)")
    p = base("forecast", cmd_forecast, "estimated completion from recent throughput and coming shifts")
    p.add_argument("--window", type=int, default=0, help="throughput window in hours (default: 24)")
    p.add_argument("--horizon", type=int, default=0, help="hours to simulate (default: 336)")
