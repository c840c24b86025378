"""CLI commands of guidelines and communication (docs/guidelines-and-communication.md):

    labelweave guideline publish PROJECT GUIDELINE.json   # protobuf JSON of Guideline, with sections
    labelweave guideline show PROJECT [--version N] [--json]
    labelweave guideline ack PROJECT [--version N]        # default: the current version
    labelweave question ask PROJECT (--task T | --section S) --text TEXT
    labelweave question answer PROJECT QUESTION --text TEXT
    labelweave question promote PROJECT ANSWER [--section S]
    labelweave question list PROJECT [--open | --answered] [--section S] [--task T]
    labelweave announce PROJECT --title TITLE [--body TEXT | --body-file FILE.md]
    labelweave inbox [--project P] [--resume-token TOKEN] [--limit N]

Lists print one JSON line per item; `inbox` prints the token to resume from on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator._pb.labelweave.api.v1 import guidance_pb2 as G
from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.cli import _client, _enum_name, _json_line, _print_json, _read_message, _usage
from coordinator.errors import InvalidArgument

# ---------------------------------------------------------------------- guideline


def render_guideline(view: G.GuidelineView) -> str:
    """A guideline as markdown, with the reader's acknowledgement state on top."""
    g = view.guideline
    lines = [f"# {g.title} (version {g.version} of {view.current_version}, project {view.project_id})"]
    if view.acknowledgement_required:
        lines.append(
            f"> You have acknowledged version {view.acknowledged_version or 'none'}: run"
            f" `labelweave guideline ack {view.project_id}` to receive this project's tasks."
        )
    if g.uri:
        lines.append(f"Document: {g.uri}")
    if g.body:
        lines += ["", g.body]
    for s in g.sections:
        lines += ["", f"## {s.title}  [{s.section_id}]"]
        if s.body:
            lines += ["", s.body]
        if s.examples:
            lines += ["", "Examples:", *(f"- {x}" for x in s.examples)]
        if s.edge_cases:
            lines += ["", "Edge cases:", *(f"- {x}" for x in s.edge_cases)]
    if view.pending_promotions:
        lines += ["", "## Promoted answers for the next version"]
        for p in view.pending_promotions:
            where = f" [{p.section_id}]" if p.section_id else ""
            lines.append(f"- Q{where}: {p.question}\n  A: {p.answer} ({p.answer_id})")
    return "\n".join(lines)


def cmd_guideline_publish(args: argparse.Namespace) -> int:
    guideline = model_pb2.Guideline()
    _read_message(args.file, guideline)
    with _client(args) as lw:
        project = lw.publish_guideline(args.project_id, guideline)
    g = project.guideline
    print(f"{args.project_id}: guideline version {g.version} published ({len(g.sections)} sections)")
    return 0


def cmd_guideline_show(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        view = lw.get_guideline(args.project_id, args.version)
    if args.json:
        _print_json(view)
    elif not view.HasField("guideline"):
        print(f"project {args.project_id} has no guideline yet")
    else:
        print(render_guideline(view))
    return 0


def cmd_guideline_ack(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        version = args.version or lw.get_guideline(args.project_id).current_version
        if not version:
            raise InvalidArgument(
                f"project {args.project_id} has no guideline to acknowledge", field="project_id"
            )
        view = lw.acknowledge_guideline(args.project_id, version)
    still = " (a newer version waits)" if view.acknowledgement_required else ""
    print(f"{args.project_id}: guideline version {view.acknowledged_version} acknowledged{still}")
    return 0


# ---------------------------------------------------------------------- questions


def question_record(q: G.Question) -> dict[str, Any]:
    return {
        "question_id": q.question_id,
        "project_id": q.project_id,
        "asker_id": q.asker_id,
        "task_id": q.task_id,
        "section_id": q.section_id,
        "guideline_version": q.guideline_version,
        "text": q.text,
        "status": _enum_name(G.QuestionStatus, q.status, "QUESTION_STATUS_"),
        "asked_at": q.asked_at.ToJsonString(),
        "answers": [
            {
                "answer_id": a.answer_id,
                "answerer_id": a.answerer_id,
                "text": a.text,
                "at": a.at.ToJsonString(),
                "promoted": a.promoted,
                "included_in_version": a.included_in_version,
            }
            for a in q.answers
        ],
    }


def cmd_question_ask(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        q = lw.ask_question(args.project_id, args.text, task_id=args.task, section_id=args.section)
    sys.stdout.write(_json_line(question_record(q)))
    return 0


def cmd_question_answer(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        q = lw.answer_question(args.project_id, args.question_id, args.text)
    sys.stdout.write(_json_line(question_record(q)))
    return 0


def cmd_question_promote(args: argparse.Namespace) -> int:
    with _client(args) as lw:
        q = lw.promote_answer(args.project_id, args.answer_id, section_id=args.section)
    sys.stdout.write(_json_line(question_record(q)))
    return 0


def cmd_question_list(args: argparse.Namespace) -> int:
    status = G.QUESTION_STATUS_UNSPECIFIED
    if args.open:
        status = G.QUESTION_STATUS_OPEN
    elif args.answered:
        status = G.QUESTION_STATUS_ANSWERED
    with _client(args) as lw:
        items = lw.iter_questions(args.project_id, status=status, section_id=args.section, task_id=args.task)
        for n, q in enumerate(items):
            if args.limit and n >= args.limit:
                break
            sys.stdout.write(_json_line(question_record(q)))
    return 0


# ---------------------------------------------------------------------- announcements and inbox


def cmd_announce(args: argparse.Namespace) -> int:
    body = Path(args.body_file).read_text(encoding="utf-8") if args.body_file else args.body
    with _client(args) as lw:
        a = lw.post_announcement(args.project_id, args.title, body)
    print(f"{args.project_id}: announcement {a.announcement_id} posted at {a.position}")
    return 0


def inbox_record(item: G.InboxItem) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": _enum_name(G.InboxKind, item.kind, "INBOX_KIND_"),
        "project_id": item.project_id,
        "position": item.position,
        "at": item.at.ToJsonString(),
        "local_time": item.local_time,
    }
    if item.kind == G.INBOX_KIND_ANNOUNCEMENT:
        out.update(
            title=item.announcement.title, body=item.announcement.body, author_id=item.announcement.author_id
        )
    elif item.kind == G.INBOX_KIND_ANSWER:
        q = item.question
        out.update(
            question_id=q.question_id,
            question=q.text,
            answer=q.answers[0].text if q.answers else "",
            answerer_id=q.answers[0].answerer_id if q.answers else "",
        )
    elif item.kind == G.INBOX_KIND_GUIDELINE:
        out.update(version=item.guideline_version, title=item.guideline_title, current=item.current)
    return out


def cmd_inbox(args: argparse.Namespace) -> int:
    token = args.resume_token
    count = 0
    with _client(args) as lw:
        while True:
            page = lw.list_inbox(token, project_id=args.project, limit=min(args.limit or 200, 200))
            for item in page.items:
                sys.stdout.write(_json_line(inbox_record(item)))
                count += 1
            token = page.resume_token
            if not page.more or (args.limit and count >= args.limit):
                break
    shown = token or '""'
    print(f"resume with --resume-token {shown}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- parser


def add_commands(
    parser: argparse.ArgumentParser, command: Callable[..., argparse.ArgumentParser], sub: Any, client: Any
) -> None:
    """Register the commands on the top-level subparsers (`command` is cli.build_parser's helper)."""
    guideline = command(
        sub, "guideline", _usage(parser, "guideline"), "read, acknowledge and publish guidelines"
    )
    gsub = guideline.add_subparsers(dest="guideline_command", required=True, metavar="ACTION")
    p = command(
        gsub,
        "publish",
        cmd_guideline_publish,
        "publish the next guideline version (protobuf JSON of Guideline: title, body, sections"
        " [{sectionId, title, body, examples, edgeCases}]); it folds in the promoted answers",
        parents=[client],
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("file", metavar="GUIDELINE.json")
    p = command(gsub, "show", cmd_guideline_show, "show a project's guideline as markdown", parents=[client])
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--version", type=int, default=0, help="default: the current version")
    p.add_argument("--json", action="store_true", help="the GuidelineView as JSON")
    p = command(
        gsub,
        "ack",
        cmd_guideline_ack,
        "acknowledge that you have read the guideline (NextTask needs the current version acknowledged)",
        parents=[client],
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--version", type=int, default=0, help="default: the current version")

    question = command(sub, "question", _usage(parser, "question"), "ask, answer and promote questions")
    qsub = question.add_subparsers(dest="question_command", required=True, metavar="ACTION")
    p = command(qsub, "ask", cmd_question_ask, "ask about a task or a guideline section", parents=[client])
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--task", default="", help="the task the question is about")
    p.add_argument("--section", default="", help="the guideline section the question is about")
    p.add_argument("--text", required=True)
    p = command(
        qsub, "answer", cmd_question_answer, "answer a question (experts, managers)", parents=[client]
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("question_id", metavar="QUESTION")
    p.add_argument("--text", required=True)
    p = command(
        qsub,
        "promote",
        cmd_question_promote,
        "fold an answer into the next guideline version (managers)",
        parents=[client],
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("answer_id", metavar="ANSWER")
    p.add_argument("--section", default="", help="the section it belongs in (default: the question's)")
    p = command(
        qsub, "list", cmd_question_list, "a project's questions, one JSON line each", parents=[client]
    )
    p.add_argument("project_id", metavar="PROJECT")
    status = p.add_mutually_exclusive_group()
    status.add_argument("--open", action="store_true", help="only questions without an answer")
    status.add_argument("--answered", action="store_true", help="only answered questions")
    p.add_argument("--section", default="", help="only questions about this section")
    p.add_argument("--task", default="", help="only questions about this task")
    p.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")

    p = command(
        sub, "announce", cmd_announce, "post an announcement to everyone on a project", parents=[client]
    )
    p.add_argument("project_id", metavar="PROJECT")
    p.add_argument("--title", required=True)
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", default="", help="markdown")
    body.add_argument("--body-file", default=None, help="markdown file")

    p = command(
        sub,
        "inbox",
        cmd_inbox,
        "your announcements, answers and guideline versions to acknowledge, in log order, one JSON"
        " line each (times also in your time zone)",
        parents=[client],
    )
    p.add_argument("--project", default="", help="only this project")
    p.add_argument("--resume-token", default="", help="continue after the items already seen")
    p.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")


__all__ = ["add_commands", "inbox_record", "question_record", "render_guideline"]
