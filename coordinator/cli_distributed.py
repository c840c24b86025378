"""CLI commands of the distributed backend: `labelweave workers` and `labelweave migrate`.

    labelweave migrate --store cassandra://127.0.0.1:9042/labelweave
    labelweave workers --event-log kafka://127.0.0.1:9092 --store cassandra://127.0.0.1:9042/labelweave

Run `workers` as many times as you like (on as many machines): each is one faust worker in the
same consumer group, and Kafka spreads the event partitions over them.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any

from coordinator.errors import InvalidArgument

Handler = Callable[[argparse.Namespace], int]

DEFAULT_EVENT_LOG = "kafka://127.0.0.1:9092"
DEFAULT_STORE = "cassandra://127.0.0.1:9042/labelweave"


def cmd_workers(args: argparse.Namespace) -> int:
    from consumers.app import WorkerSettings, run_worker

    if not str(args.event_log).startswith("kafka://"):
        raise InvalidArgument(
            "workers read the Kafka event log: give --event-log kafka://HOST:PORT[/?…]", field="--event-log"
        )
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = WorkerSettings(
        event_log=args.event_log,
        store=args.store,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        app_id=args.app_id or "",
        data_dir=args.data_dir or "",
    )
    run_worker(settings, loglevel=args.log_level)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from projections.migrate import main as migrate_main

    argv = [args.store]
    if args.status:
        argv.append("--status")
    return int(migrate_main(argv))


def add_commands(command: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    """Register the commands on the top-level subparsers (`command` is cli.build_parser's helper)."""
    env_log = os.environ.get("LABELWEAVE_EVENT_LOG", DEFAULT_EVENT_LOG)
    env_store = os.environ.get("LABELWEAVE_STORE", DEFAULT_STORE)

    p = command(sub, "workers", cmd_workers, "run a faust worker that builds the projections from Kafka")
    p.add_argument("--event-log", default=env_log, help="kafka:// URL (default: %(default)s)")
    p.add_argument("--store", default=env_store, help="projection store URL (default: %(default)s)")
    p.add_argument(
        "--metrics-port", type=int, default=9465, help="Prometheus port, 0 disables (default: %(default)s)"
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="default: %(default)s")
    p.add_argument(
        "--app-id", default=None, help="faust app id = consumer group (default: PREFIX.projections)"
    )
    p.add_argument(
        "--data-dir", default=None, help="faust's local state directory (default: .run/workers/APP)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    p = command(sub, "migrate", cmd_migrate, "create or upgrade the Cassandra keyspace and tables")
    p.add_argument("--store", default=env_store, help="cassandra:// URL (default: %(default)s)")
    p.add_argument("--status", action="store_true", help="only show applied and pending migrations")
