"""Schema migrations of the Cassandra projection store.

    python -m projections.migrate cassandra://127.0.0.1:9042/labelweave?replication_factor=1
    python -m projections.migrate --status cassandra://127.0.0.1:9042/labelweave

Applies `projections/schema/NNN_name.cql` in version order and records each applied version in the
keyspace's `schema_migrations` table. Creates the keyspace first if needed (SimpleStrategy with the
URL's `replication_factor`, or NetworkTopologyStrategy with `datacenters=dc1:3,dc2:3`; an existing
keyspace's replication is left alone).

Idempotent: applied versions are skipped (their checksum must still match the file). Safe to run
from several processes at once: each version is claimed with a lightweight transaction (`INSERT …
IF NOT EXISTS`), only the claimant runs its statements, the others wait until it is recorded as
applied. A claim whose owner died is taken over after `stale_after` seconds (another LWT); since
every statement of a migration must be idempotent (`IF NOT EXISTS`…), re-running a half-applied
migration is safe. `schema_migrations` itself is created with a table id derived from the keyspace
name, so two processes creating it at once on different coordinators agree on its identity.

How to add a migration: projections/schema/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cassandra.query import SimpleStatement  # type: ignore[import-untyped]

from coordinator.errors import FailedPrecondition, LabelweaveError
from projections.cassandra import (
    DICT_PROFILE,
    DRIVER_ERRORS,
    CassandraConfig,
    connect,
    driver_error,
    parse_url,
)

_FILE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.cql$")
_TABLE_ID_NAMESPACE = uuid.UUID("6b0f3c2e-6a55-4d8e-9a51-7c2f0e5d9a10")

MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    checksum: str
    """SHA-256 of the statements (comments and whitespace around statements do not count)."""

    @property
    def label(self) -> str:
        return f"{self.version:03d}_{self.name}"


@dataclass
class MigrationReport:
    keyspace: str
    applied: list[int] = field(default_factory=list)
    """Versions this call applied."""
    already: list[int] = field(default_factory=list)
    """Versions found applied (by an earlier run or by a concurrent runner this call waited for)."""


def split_statements(text: str) -> list[str]:
    """Split CQL on `;`, ignoring `--`, `//` and `/* */` comments and `;` inside '…', "…" or $$…$$."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith(("--", "//"), i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError("unterminated /* comment")
            buf.append(" ")
            i = j + 2
            continue
        ch = text[i]
        if ch in "'\"":
            j = i + 1
            while True:
                j = text.find(ch, j)
                if j < 0:
                    raise ValueError(f"unterminated {ch} string")
                if text.startswith(ch * 2, j):
                    j += 2
                    continue
                break
            buf.append(text[i : j + 1])
            i = j + 1
            continue
        if text.startswith("$$", i):
            j = text.find("$$", i + 2)
            if j < 0:
                raise ValueError("unterminated $$ string")
            buf.append(text[i : j + 2])
            i = j + 2
            continue
        if ch == ";":
            stmt = " ".join("".join(buf).split())
            if stmt:
                out.append(stmt)
            buf = []
            i += 1
            continue
        buf.append(ch)
        i += 1
    tail = " ".join("".join(buf).split())
    if tail:
        out.append(tail)
    return out


def load_migrations() -> list[Migration]:
    """Every `NNN_name.cql` shipped in `projections/schema`, by version (1, 2, 3… with no gaps)."""
    found: list[Migration] = []
    for entry in importlib.resources.files("projections.schema").iterdir():
        m = _FILE.match(entry.name)
        if m is None:
            continue
        statements = tuple(split_statements(entry.read_text(encoding="utf-8")))
        if not statements:
            raise ValueError(f"migration {entry.name} has no statements")
        checksum = hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()
        found.append(Migration(int(m.group(1)), m.group(2), statements, checksum))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migration versions must be 1, 2, 3… without gaps or repeats: {versions}")
    return found


def latest_version() -> int:
    return len(load_migrations())


def _table_id(keyspace: str) -> uuid.UUID:
    return uuid.uuid5(_TABLE_ID_NAMESPACE, f"{keyspace}.{MIGRATIONS_TABLE}")


def _now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _Runner:
    def __init__(
        self, cfg: CassandraConfig, session: Any, out: Callable[[str], None], stale_after: float
    ) -> None:
        self.cfg = cfg
        self.session = session
        self.out = out
        self.stale_after = stale_after
        self.owner = uuid.uuid4()
        self.by = f"{socket.gethostname()}:{os.getpid()}"
        ks = cfg.keyspace
        self._claim = self._lwt(
            f"INSERT INTO {ks}.{MIGRATIONS_TABLE} (version, name, checksum, state, owner, claimed_at, "
            "claimed_by) VALUES (%s, %s, %s, 'applying', %s, %s, %s) IF NOT EXISTS"
        )
        self._takeover = self._lwt(
            f"UPDATE {ks}.{MIGRATIONS_TABLE} SET owner = %s, claimed_at = %s, claimed_by = %s "
            "WHERE version = %s IF owner = %s AND state = 'applying'"
        )
        self._mark = self._lwt(
            f"UPDATE {ks}.{MIGRATIONS_TABLE} SET state = 'applied', applied_at = %s, applied_by = %s "
            "WHERE version = %s IF owner = %s"
        )

    def _execute(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        return self.session.execute(statement, params, execution_profile=DICT_PROFILE, **kw)

    def _lwt(self, cql: str) -> Any:
        return SimpleStatement(cql, serial_consistency_level=self.cfg.serial_consistency_level)

    def run(self, migrations: Sequence[Migration], report: MigrationReport) -> None:
        self._ensure_keyspace()
        for mig in migrations:
            self._migrate_one(mig, report)

    def _ensure_keyspace(self) -> None:
        ks = self.cfg.keyspace
        row = self._execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (ks,)
        ).one()
        if row is None:
            self._execute(
                f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {self.cfg.replication_cql()} "
                "AND durable_writes = true"
            )
            self.out(f"keyspace {ks}: created with replication {self.cfg.replication_cql()}")
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {ks}.{MIGRATIONS_TABLE} ("
            "version int PRIMARY KEY, name text, checksum text, state text, owner uuid, "
            "claimed_at timestamp, claimed_by text, applied_at timestamp, applied_by text"
            f") WITH ID = {_table_id(ks)}"
        )
        self.session.set_keyspace(ks)

    def _migrate_one(self, mig: Migration, report: MigrationReport) -> None:
        deadline = time.monotonic() + self.stale_after + 120
        waited = False
        while True:
            rs = self._execute(
                self._claim, (mig.version, mig.name, mig.checksum, self.owner, _now(), self.by)
            )
            if rs.was_applied:
                self._apply(mig, report)
                return
            row = rs.one()
            if row["state"] == "applied":
                if row["checksum"] != mig.checksum:
                    raise FailedPrecondition(
                        f"{self.cfg.where}: migration {mig.label} was applied with checksum "
                        f"{row['checksum'][:12]}… but this release's file has {mig.checksum[:12]}…: "
                        "applied migrations must never change; add a new one instead"
                    )
                report.already.append(mig.version)
                if not waited:
                    self.out(f"{mig.label}: already applied")
                return
            claimed_at = _as_utc(row["claimed_at"]) if row["claimed_at"] is not None else None
            if claimed_at is None or (_now() - claimed_at).total_seconds() > self.stale_after:
                rs = self._execute(self._takeover, (self.owner, _now(), self.by, mig.version, row["owner"]))
                if rs.was_applied:
                    self.out(f"{mig.label}: took over the stale claim of {row['claimed_by']}")
                    self._apply(mig, report)
                    return
                continue
            if time.monotonic() > deadline:
                raise FailedPrecondition(
                    f"{self.cfg.where}: migration {mig.label} is being applied by {row['claimed_by']} "
                    f"since {claimed_at.isoformat()}; gave up waiting"
                )
            if not waited:
                self.out(f"{mig.label}: being applied by {row['claimed_by']}; waiting")
                waited = True
            time.sleep(0.2)

    def _apply(self, mig: Migration, report: MigrationReport) -> None:
        started = time.monotonic()
        for stmt in mig.statements:
            rs = self._execute(SimpleStatement(stmt), timeout=max(60.0, self.cfg.request_timeout))
            if (
                not rs.response_future.is_schema_agreed
                and not self.session.cluster.control_connection.wait_for_schema_agreement(wait_time=60)
            ):
                raise FailedPrecondition(
                    f"{self.cfg.where}: no schema agreement after {mig.label}: {stmt[:60]}…; "
                    "check that every node is up, then run the migration again"
                )
        rs = self._execute(self._mark, (_now(), self.by, mig.version, self.owner))
        if not rs.was_applied:
            # Someone took our claim over (we looked dead): they apply the same idempotent
            # statements and record the version; nothing to undo.
            self.out(f"{mig.label}: our claim was taken over; the other runner records it")
            return
        report.applied.append(mig.version)
        self.out(
            f"{mig.label}: applied ({len(mig.statements)} statements, {time.monotonic() - started:.1f} s)"
        )


def migrate(
    target: str | CassandraConfig,
    *,
    session: Any = None,
    upto: int | None = None,
    stale_after: float = 120.0,
    out: Callable[[str], None] = print,
) -> MigrationReport:
    """Bring the URL's keyspace up to the latest migration (or to version `upto`).

    With `session`, that connected session is used (its keyspace is set to the URL's);
    otherwise one is opened and closed here. Driver errors become `Unavailable`/`FailedPrecondition`.
    """
    cfg = parse_url(target) if isinstance(target, str) else target
    migrations = [m for m in load_migrations() if upto is None or m.version <= upto]
    report = MigrationReport(cfg.keyspace)
    cluster = None
    if session is None:
        cluster, session = connect(cfg)
    try:
        _Runner(cfg, session, out, stale_after).run(migrations, report)
    except DRIVER_ERRORS as exc:
        raise driver_error(cfg, exc, "apply schema migrations") from exc
    finally:
        if cluster is not None:
            cluster.shutdown()
    return report


def applied_versions(session: Any, cfg: CassandraConfig) -> dict[int, tuple[str, str, str]] | None:
    """{version: (name, state, checksum)} recorded in the keyspace, or None if the keyspace or its
    `schema_migrations` table does not exist."""
    ks = cfg.keyspace
    row = session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s AND table_name = %s",
        (ks, MIGRATIONS_TABLE),
        execution_profile=DICT_PROFILE,
    ).one()
    if row is None:
        return None
    out: dict[int, tuple[str, str, str]] = {}
    rows = session.execute(
        f"SELECT version, name, state, checksum FROM {ks}.{MIGRATIONS_TABLE}", execution_profile=DICT_PROFILE
    )
    for r in rows:
        out[int(r["version"])] = (str(r["name"]), str(r["state"]), str(r["checksum"]))
    return out


def check_schema(session: Any, cfg: CassandraConfig) -> None:
    """Refuse (FailedPrecondition) unless the keyspace has exactly the migrations this release knows."""
    known = {m.version: m for m in load_migrations()}
    try:
        recorded = applied_versions(session, cfg)
    except DRIVER_ERRORS as exc:
        raise driver_error(cfg, exc, "read the schema version") from exc
    fix = f"run: python -m projections.migrate '{cfg.safe_url}' (or add migrate=true to the store URL)"
    if recorded is None:
        raise FailedPrecondition(
            f"{cfg.where} has no Labelweave schema (keyspace or {MIGRATIONS_TABLE} table missing); {fix}"
        )
    applied = {v for v, (_, state, _) in recorded.items() if state == "applied"}
    newer = sorted(v for v in applied if v not in known)
    if newer:
        names = ", ".join(f"{v:03d}_{recorded[v][0]}" for v in newer)
        raise FailedPrecondition(
            f"{cfg.where} has schema migrations newer than this Labelweave knows ({names}; it knows up "
            f"to {max(known, default=0):03d}): upgrade Labelweave, or use another keyspace"
        )
    missing = sorted(v for v in known if v not in applied)
    if missing:
        names = ", ".join(known[v].label for v in missing)
        raise FailedPrecondition(f"{cfg.where} is missing schema migrations {names}; {fix}")
    for v in applied:
        if recorded[v][2] != known[v].checksum:
            import logging

            logging.getLogger(__name__).warning(
                "%s: migration %s was applied with another checksum than this release's file",
                cfg.where,
                known[v].label,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m projections.migrate",
        description="Create or upgrade the Cassandra keyspace of the projection store.",
    )
    parser.add_argument("url", help="cassandra://host[:port][,host…]/keyspace[?replication_factor=N&…]")
    parser.add_argument("--status", action="store_true", help="only show applied and pending migrations")
    parser.add_argument("--upto", type=int, default=None, help="apply migrations up to this version only")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=120.0,
        help="seconds after which another runner's unfinished claim is taken over (default 120)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = parse_url(args.url)
        if args.status:
            return _status(cfg)
        report = migrate(cfg, upto=args.upto, stale_after=args.stale_after)
    except (LabelweaveError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"keyspace {report.keyspace}: {len(report.applied)} applied, {len(report.already)} already applied; "
        f"schema at version {max(report.applied + report.already, default=0):03d}"
    )
    return 0


def _status(cfg: CassandraConfig) -> int:
    cluster, session = connect(cfg)
    try:
        try:
            recorded = applied_versions(session, cfg) or {}
        except DRIVER_ERRORS as exc:
            raise driver_error(cfg, exc, "read the schema version") from exc
    finally:
        cluster.shutdown()
    pending = 0
    for mig in load_migrations():
        state = recorded.get(mig.version, ("", "pending", ""))[1]
        pending += state != "applied"
        print(f"{mig.label}: {state}")
    for version in sorted(set(recorded) - {m.version for m in load_migrations()}):
        print(f"{version:03d}_{recorded[version][0]}: {recorded[version][1]} (unknown to this release)")
    return 1 if pending else 0


if __name__ == "__main__":
    raise SystemExit(main())
