"""CLI commands of consensus and agreement: `labelweave agreement` and `labelweave consensus`.

    labelweave agreement P                      # the project: kappas, alpha, per class/annotator/pair
    labelweave agreement P --label car          # one class (one-vs-rest)
    labelweave agreement P --person ann         # one annotator vs the others
    labelweave agreement P --person ann --pair bob
    labelweave agreement P --dawid-skene        # estimated labels and annotator confusion matrices
    labelweave consensus TASK                   # the task's ConsensusComputed per round

Output is the protobuf JSON of the response (docs/consensus-and-agreement.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def cmd_agreement(args: argparse.Namespace) -> int:
    from coordinator.cli import _client, _print_json

    with _client(args) as lw:
        if args.dawid_skene:
            _print_json(lw.estimate_dawid_skene(args.project_id, args.max_iterations))
        else:
            _print_json(
                lw.get_agreement(
                    args.project_id, label=args.label, person_id=args.person, other_person_id=args.pair
                )
            )
    return 0


def cmd_consensus(args: argparse.Namespace) -> int:
    from coordinator.cli import _client, _print_json

    with _client(args) as lw:
        _print_json(lw.get_consensus(args.task_id))
    return 0


def add_commands(
    command: Callable[..., argparse.ArgumentParser], sub: Any, client: argparse.ArgumentParser
) -> None:
    """Register the commands on the top-level subparsers (`command` is cli.build_parser's helper,
    `client` the parent parser with the connection flags)."""
    p = command(
        sub,
        "agreement",
        cmd_agreement,
        "live inter-annotator agreement of a project (or a class, an annotator, a pair)",
        parents=[client],
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--label", default="", help="one class only (one-vs-rest)")
    p.add_argument("--person", default="", help="one annotator vs the others (annotators: yourself)")
    p.add_argument("--pair", default="", metavar="PERSON", help="with --person: that pair")
    p.add_argument(
        "--dawid-skene",
        action="store_true",
        help="Dawid-Skene estimates of the labels and each annotator's confusion matrix instead",
    )
    p.add_argument("--max-iterations", type=int, default=0, help="EM iterations (default 100)")
    p = command(
        sub, "consensus", cmd_consensus, "the consensus of a task's overlapping annotations", parents=[client]
    )
    p.add_argument("task_id", metavar="TASK")
