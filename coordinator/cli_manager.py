"""CLI commands of the manager controls (docs/manager-controls.md).

labelweave assign TASK --person alice --reason "knows this customer"
labelweave assign TASK --team night-shift [--force]
labelweave unassign TASK
labelweave pause PROJECT --reason "guideline v3 under review"
labelweave resume PROJECT
labelweave reprioritise PROJECT --priority 9 --batch-id street-001
labelweave reprioritise PROJECT --priority 9 --task t1 --task t2 | --tasks-file ids.txt
labelweave reprioritise PROJECT --priority 9 --min-priority 0 --max-priority 4
labelweave assigned PROJECT --person alice
labelweave teams PERSON night-shift lidar-experts     (replaces the person's teams)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.cli import _client, _print_json
from coordinator.errors import InvalidArgument


def cmd_assign(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(
            lw.assign_task(
                args.task_id,
                person_id=args.person or "",
                team=args.team or "",
                reason=args.reason,
                force=args.force,
            )
        )
    return 0


def cmd_unassign(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.unassign_task(args.task_id, args.reason))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.pause_project(args.project_id, args.reason))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(lw.resume_project(args.project_id, args.reason))
    return 0


def cmd_reprioritise(args: argparse.Namespace) -> int:
    ids: list[str] = list(args.task)
    if args.tasks_file:
        text = Path(args.tasks_file).read_text(encoding="utf-8")
        ids += [line.strip() for line in text.splitlines() if line.strip()]
    bounds = (args.min_priority, args.max_priority)
    ranged = bounds != (None, None)
    if ranged and None in bounds:
        raise InvalidArgument("give both --min-priority and --max-priority", field="--max-priority")
    if sum((bool(ids), bool(args.batch_id), ranged)) != 1:
        raise InvalidArgument(
            "give --task/--tasks-file, --batch-id or --min/--max-priority (one of them)", field="--batch-id"
        )
    with _client(args) as lw:
        _print_json(
            lw.reprioritise_tasks(
                args.project_id,
                args.priority,
                ids,
                batch_id=args.batch_id,
                priority_range=(int(args.min_priority), int(args.max_priority)) if ranged else None,
                reason=args.reason,
                command_id=args.command_id,
            )
        )
    return 0


def cmd_assigned(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        _print_json(
            lw.list_assigned(
                args.project_id, person_id=args.person or "", team=args.team or "", limit=args.limit
            )
        )
    return 0


def cmd_teams(args: argparse.Namespace) -> int:
    """Show a person's teams, or replace them (UpdatePerson with the rest of the profile kept)."""
    with _client(args) as lw:
        person = lw.get_person(args.person_id)
        if not args.teams and not args.clear:
            _print_json(person)
            return 0
        spec = model_pb2.PersonSpec()
        spec.CopyFrom(person.spec)
        del spec.teams[:]
        spec.teams.extend(args.teams)
        _print_json(lw.update_person(spec))
    return 0


def add_manager_commands(command: Callable[..., argparse.ArgumentParser], sub: Any, client: Any) -> None:
    """Register the commands on the top-level subparsers (`command` is cli.build_parser's helper)."""
    p = command(
        sub,
        "assign",
        cmd_assign,
        "reserve a task for a person or a team: only they may lease it, and it is served to them first",
        parents=[client],
    )
    p.add_argument("task_id", metavar="TASK")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--person", default=None)
    who.add_argument("--team", default=None)
    p.add_argument("--reason", default="")
    p.add_argument(
        "--force",
        action="store_true",
        help="assign even though the assignee lacks required skills (recorded)",
    )
    p = command(sub, "unassign", cmd_unassign, "open an assigned task to everyone again", parents=[client])
    p.add_argument("task_id", metavar="TASK")
    p.add_argument("--reason", default="")
    p = command(
        sub, "pause", cmd_pause, "pause a project: nothing is leased until it is resumed", parents=[client]
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--reason", required=True, help="shown to people asking for work")
    p = command(sub, "resume", cmd_resume, "resume a paused project", parents=[client])
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--reason", default="")
    p = command(
        sub,
        "reprioritise",
        cmd_reprioritise,
        "give tasks a new priority, all or nothing (listed tasks, an import batch or a priority range)",
        parents=[client],
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--priority", type=int, required=True, help="higher first")
    p.add_argument("--task", action="append", default=[], metavar="ID", help="repeatable")
    p.add_argument("--tasks-file", default=None, metavar="FILE", help="one task id per line")
    p.add_argument("--batch-id", default="", help="every task of this import batch")
    p.add_argument("--min-priority", type=int, default=None, help="with --max-priority: every open task")
    p.add_argument("--max-priority", type=int, default=None, help="whose priority is in [min, max]")
    p.add_argument("--reason", default="")
    p.add_argument("--command-id", default=None, help="reuse to retry safely (default: a new one)")
    p = command(sub, "assigned", cmd_assigned, "tasks waiting for a person or a team", parents=[client])
    p.add_argument("project_id", metavar="PROJECT")
    whose = p.add_mutually_exclusive_group(required=True)
    whose.add_argument("--person", default=None)
    whose.add_argument("--team", default=None)
    p.add_argument("--limit", type=int, default=0)
    p = command(sub, "teams", cmd_teams, "show a person's teams, or replace them", parents=[client])
    p.add_argument("person_id", metavar="PERSON")
    p.add_argument("teams", nargs="*", metavar="TEAM")
    p.add_argument("--clear", action="store_true", help="remove the person from every team")
