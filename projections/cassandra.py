"""Cassandra projection store (`cassandra://host[:port][,host2[:port]…]/keyspace?param=value&…`).

Documents live in `docs`, `PRIMARY KEY ((collection, pk), sk)`: one Cassandra partition per
(collection, pk), rows in `sk` order, values as compact JSON text. Checkpoints are one row per
(consumer, log partition). The schema is created and upgraded by `projections.migrate` (CQL files in
`projections/schema/`); the store refuses to open a keyspace whose migrations are missing or newer
than it knows, unless `migrate=true` is in the URL. See docs/cassandra-store.md for the parameters,
the guarantees and measurements.

How a commit is made atomic:

- Every commit gets one write timestamp `T` (microseconds, strictly increasing per process) used for
  all of its Put/Delete statements; changes are collapsed to the last one per key first (inside a
  batch all statements share their timestamp, so "delete then put" of one key would otherwise lose
  the put). Checkpoint rows are written `USING TIMESTAMP <offset>`, so last-write-wins keeps the
  highest offset of each partition: the per-partition max-merge costs no read and any write can be
  repeated, late or twice, without harm.
- A commit that fits the server's `batch_size_fail_threshold` (read from `system_views.settings`) is
  one LOGGED batch of rows + checkpoint rows: all or nothing, eventually, via Cassandra's batchlog.
- A bigger one (or every one with `commit=staged`) is *staged*: its changes are first written as a
  redo record to `commit_intents`/`commit_chunks` ("sealed"), then the rows are written partition by
  partition, then the checkpoint rows and the record's state "done" in one single-partition write.
  If the writer dies in between, the next `checkpoint(consumer)` (which a runner reads before it
  resumes) finds the sealed record and applies the very same changes with the very same timestamp
  before answering, so a restart sees either none or all of the commit. Re-applying is harmless
  because the record holds final documents, not increments, and `T` makes a late re-application lose
  against anything written after it.
- A *bulk* commit (`commit_prepared(..., bulk=True)`, used by `consumers.rebuild` to load a store it
  has just cleared) is staged without the redo record: the data is written once instead of twice.
  Its sealed record only says "rows in progress"; if it is left sealed, `checkpoint(consumer)`
  refuses (`FailedPrecondition`: rebuild the projections) instead of resuming on partial rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from cassandra import (  # type: ignore[import-untyped]
    ConsistencyLevel,
    DriverException,
)
from cassandra import (
    RequestValidationException as _DriverValidationError,
)
from cassandra.auth import PlainTextAuthProvider  # type: ignore[import-untyped]
from cassandra.cluster import (  # type: ignore[import-untyped]
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
)
from cassandra.concurrent import execute_concurrent  # type: ignore[import-untyped]
from cassandra.connection import ConnectionException  # type: ignore[import-untyped]
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy  # type: ignore[import-untyped]
from cassandra.protocol import (  # type: ignore[import-untyped]
    ErrorMessage,
)
from cassandra.protocol import (
    RequestValidationException as _ProtocolValidationError,
)
from cassandra.query import (  # type: ignore[import-untyped]
    UNSET_VALUE,
    BatchStatement,
    BatchType,
    dict_factory,
    tuple_factory,
)

from coordinator.errors import FailedPrecondition, InvalidArgument, LabelweaveError, Unavailable
from coordinator.eventlog.base import Checkpoint
from projections.base import Change, Delete, Doc, ProjectionStore, Put
from projections.jsonfast import compact_json, loads

logger = logging.getLogger(__name__)

_dumps = compact_json
_loads = loads

SCHEME = "cassandra://"
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    DriverException,
    ErrorMessage,
    ConnectionException,
    NoHostAvailable,
    OSError,
)
"""Everything the driver raises for a failed request or connection."""

_VALIDATION_ERRORS = (_DriverValidationError, _ProtocolValidationError)

_CONSISTENCY = {
    name.lower(): getattr(ConsistencyLevel, name)
    for name in ("ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE")
}
_SERIAL_CONSISTENCY = {"serial": ConsistencyLevel.SERIAL, "local_serial": ConsistencyLevel.LOCAL_SERIAL}
_KEYSPACE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_DC = re.compile(r"^[A-Za-z0-9_.\-]+$")
_PARAMS = (
    "consistency",
    "serial_consistency",
    "replication_factor",
    "datacenters",
    "local_dc",
    "connect_timeout",
    "request_timeout",
    "fetch_size",
    "batch_bytes",
    "commit",
    "migrate",
)

_MAX_BATCH_STATEMENTS = 65_000  # the native protocol counts a batch's statements in 16 bits
_ROW_OVERHEAD = 64  # bytes per row on top of keys and value: timestamps, flags, clustering, slack
_INLINE_INTENT = 64 * 1024  # redo records up to this size live in the commit_intents row itself
_DEFAULT_BATCH_FAIL = 50 * 1024  # Cassandra 5.0 default batch_size_fail_threshold
_DEFAULT_MAX_MUTATION = 16 * 1024 * 1024  # half of the default 32 MiB commitlog segment
_STALE_WRITER = 24 * 3600  # "done" redo records of other writers idle longer than this are removed
_ATTEMPTS = 3
_PACK_PARTITIONS = 10  # Cassandra warns about unlogged batches over more partitions than this
_BULK_PACK_PARTITIONS = 50
"""Partitions per unlogged batch of a bulk commit (a rebuild's): twice the rows/s of 10 on the
dev node (per-request costs dominate), at the price of Cassandra's "unlogged batch across
partitions" client warning, which those batches already get for their size (over 5 KiB)."""
_BULK = -1
"""`commit_intents.chunks` of a bulk commit: its changes are not recorded, so it cannot be rolled forward."""
_READ_AHEAD = 64  # partition queries `items()` keeps in flight


# ---------------------------------------------------------------------- URL


@dataclass(frozen=True)
class CassandraConfig:
    """A parsed `cassandra://` URL. `url` keeps the text it came from (password included)."""

    url: str
    hosts: tuple[tuple[str, int], ...]
    keyspace: str
    username: str | None = None
    password: str | None = None
    consistency: str = "local_quorum"
    serial_consistency: str = "serial"
    replication_factor: int = 1
    datacenters: tuple[tuple[str, int], ...] = ()
    local_dc: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    fetch_size: int = 1000
    batch_bytes: int | None = None
    commit: str = "staged"  # the coordinator polls checkpoints, then reads rows: see docs
    migrate: bool = False

    @property
    def hosts_text(self) -> str:
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)

    @property
    def where(self) -> str:
        """`Cassandra at h1:9042,h2:9042 (keyspace 'labelweave')`: for error messages."""
        return f"Cassandra at {self.hosts_text} (keyspace {self.keyspace!r})"

    @property
    def safe_url(self) -> str:
        """The URL with the password replaced by `***` (for messages and logs)."""
        if self.password is None:
            return self.url
        return re.sub(r"^(cassandra://[^:/@]*:)[^/]*@", r"\1***@", self.url, count=1)

    @property
    def consistency_level(self) -> int:
        return int(_CONSISTENCY[self.consistency])

    @property
    def serial_consistency_level(self) -> int:
        return int(_SERIAL_CONSISTENCY[self.serial_consistency])

    def replication_cql(self) -> str:
        """The `replication = {…}` map the migration creates the keyspace with."""
        if self.datacenters:
            dcs = ", ".join(f"'{dc}': {rf}" for dc, rf in self.datacenters)
            return f"{{'class': 'NetworkTopologyStrategy', {dcs}}}"
        return f"{{'class': 'SimpleStrategy', 'replication_factor': {self.replication_factor}}}"


def _bad(url: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"bad Cassandra store URL {url!r}: {why} (expected "
        "cassandra://host[:port][,host2[:port]…]/keyspace[?consistency=local_quorum&…], "
        "see docs/cassandra-store.md)",
        field="store",
    )


def _parse_hosts(url: str, text: str) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise _bad(url, "empty host")
        if part.startswith("["):  # [IPv6]:port
            host, sep, rest = part[1:].partition("]")
            if not sep:
                raise _bad(url, f"unterminated IPv6 address {part!r}")
            port_text = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise _bad(url, f"bad host {part!r}")
        elif part.count(":") == 1:
            host, _, port_text = part.partition(":")
        elif ":" in part:
            raise _bad(url, f"write IPv6 addresses in brackets: {part!r}")
        else:
            host, port_text = part, ""
        if not host:
            raise _bad(url, f"bad host {part!r}")
        try:
            port = int(port_text) if port_text else 9042
        except ValueError:
            raise _bad(url, f"bad port in {part!r}") from None
        if not 0 < port < 65536:
            raise _bad(url, f"bad port in {part!r}")
        hosts.append((host, port))
    return tuple(hosts)


def _number(url: str, name: str, text: str, kind: type[int] | type[float], low: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise _bad(url, f"{name} must be a number, not {text!r}") from None
    if value < low:
        raise _bad(url, f"{name} must be at least {low}")
    return value


def _bool(url: str, name: str, text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise _bad(url, f"{name} must be true or false, not {text!r}")


def parse_url(url: str) -> CassandraConfig:
    """Parse and check a `cassandra://` URL (every parameter is described in docs/cassandra-store.md)."""
    from urllib.parse import parse_qsl, unquote

    if not url.startswith(SCHEME):
        raise _bad(url, "it must start with cassandra://")
    rest = url[len(SCHEME) :]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if not slash:
        raise _bad(url, "no keyspace (cassandra://host/keyspace)")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text)
        password = unquote(password_text) if colon else ""
        if not username:
            raise _bad(url, "empty user name")
    hosts = _parse_hosts(url, netloc)
    keyspace = path.strip("/")
    if not _KEYSPACE.match(keyspace):
        raise _bad(
            url,
            f"keyspace {keyspace!r} must be 1-48 lower-case letters, digits or underscores, "
            "starting with a letter",
        )
    values: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name not in _PARAMS:
            raise _bad(url, f"unknown parameter {name!r} (known: {', '.join(_PARAMS)})")
        if name in values:
            raise _bad(url, f"parameter {name!r} given twice")
        values[name] = value
    cfg = CassandraConfig(url=url, hosts=hosts, keyspace=keyspace, username=username, password=password)
    changes: dict[str, Any] = {}
    if "consistency" in values:
        level = values["consistency"].lower()
        if level not in _CONSISTENCY or level == "any":
            raise _bad(url, f"consistency {values['consistency']!r} (use one of local_quorum, quorum, …)")
        changes["consistency"] = level
    if "serial_consistency" in values:
        level = values["serial_consistency"].lower()
        if level not in _SERIAL_CONSISTENCY:
            raise _bad(url, "serial_consistency must be serial or local_serial")
        changes["serial_consistency"] = level
    if "replication_factor" in values:
        changes["replication_factor"] = _number(
            url, "replication_factor", values["replication_factor"], int, 1
        )
    if "datacenters" in values:
        if "replication_factor" in values:
            raise _bad(url, "give either replication_factor (SimpleStrategy) or datacenters (NTS), not both")
        dcs: list[tuple[str, int]] = []
        for item in values["datacenters"].split(","):
            dc, colon, rf = item.partition(":")
            if not colon or not _DC.match(dc):
                raise _bad(url, f"datacenters must look like dc1:3,dc2:3, not {values['datacenters']!r}")
            dcs.append((dc, _number(url, f"replication factor of {dc}", rf, int, 1)))
        changes["datacenters"] = tuple(dcs)
    if "local_dc" in values:
        if not _DC.match(values["local_dc"]):
            raise _bad(url, f"bad local_dc {values['local_dc']!r}")
        changes["local_dc"] = values["local_dc"]
    for name in ("connect_timeout", "request_timeout"):
        if name in values:
            changes[name] = _number(url, name, values[name], float, 0.1)
    if "fetch_size" in values:
        changes["fetch_size"] = _number(url, "fetch_size", values["fetch_size"], int, 10)
    if "batch_bytes" in values:
        changes["batch_bytes"] = _number(url, "batch_bytes", values["batch_bytes"], int, 0)
    if "commit" in values:
        if values["commit"] not in ("batch", "staged"):
            raise _bad(url, "commit must be batch or staged")
        changes["commit"] = values["commit"]
    if "migrate" in values:
        changes["migrate"] = _bool(url, "migrate", values["migrate"])
    return replace(cfg, **changes)


# ---------------------------------------------------------------------- driver plumbing


def is_validation_error(exc: BaseException) -> bool:
    """The server refused the request itself (bad CQL, too large…): retrying cannot help."""
    return isinstance(exc, _VALIDATION_ERRORS)


def driver_error(cfg: CassandraConfig, exc: BaseException, doing: str) -> LabelweaveError:
    """Map a driver exception to the project's errors, naming the hosts and the keyspace."""
    detail = f"{type(exc).__name__}: {exc}"
    if is_validation_error(exc):
        return FailedPrecondition(f"{cfg.where} refused to {doing}: {detail}")
    return Unavailable(f"{cfg.where} failed to {doing}: {detail}")


DICT_PROFILE = "labelweave-dict"
"""Execution profile of `connect`'s sessions that returns rows as dicts (the default: tuples)."""


def connect(cfg: CassandraConfig) -> tuple[Any, Any]:
    """A connected (Cluster, Session) with no keyspace set; raises Unavailable if no host answers."""

    def profile(row_factory: Any) -> Any:
        return ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=cfg.local_dc)),
            consistency_level=cfg.consistency_level,
            serial_consistency_level=cfg.serial_consistency_level,
            request_timeout=cfg.request_timeout,
            row_factory=row_factory,
        )

    auth = None
    if cfg.username is not None:
        auth = PlainTextAuthProvider(username=cfg.username, password=cfg.password or "")
    cluster = None
    try:
        cluster = Cluster(
            contact_points=list(cfg.hosts),
            port=cfg.hosts[0][1],
            auth_provider=auth,
            execution_profiles={
                EXEC_PROFILE_DEFAULT: profile(tuple_factory),
                DICT_PROFILE: profile(dict_factory),
            },
            connect_timeout=cfg.connect_timeout,
            control_connection_timeout=cfg.connect_timeout,
            application_name="labelweave",
            # Without TCP_NODELAY a request spanning several segments waits for the server's
            # delayed ACK: a 100-row batch took ~45 ms instead of ~5 ms on loopback.
            sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        session = cluster.connect()
    except DRIVER_ERRORS as exc:
        if cluster is not None:
            cluster.shutdown()
        raise Unavailable(
            f"cannot connect to {cfg.where}: {type(exc).__name__}: {exc} "
            "(is Cassandra running? locally: ops/services.sh start)"
        ) from exc
    session.default_fetch_size = cfg.fetch_size
    return cluster, session


def server_setting(session: Any, name: str) -> str | None:
    """A value from `system_views.settings` (Cassandra 4.0+), or None if unreadable."""
    try:
        row = session.execute("SELECT value FROM system_views.settings WHERE name = %s", (name,)).one()
    except DRIVER_ERRORS:
        return None
    return None if row is None or row[0] is None else str(row[0])


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_data_size(text: str | None, default: int, *, bare_unit: int = 1024) -> int:
    """`50KiB` → 51200; a bare number counts `bare_unit`s (pre-4.1 settings were in KiB)."""
    if text is None:
        return default
    m = _SIZE.match(text)
    if m is None:
        return default
    unit = _UNITS[m.group(2)] if m.group(2) else bare_unit
    return int(m.group(1)) * unit


class _Clock:
    """Write timestamps in microseconds, strictly increasing within the process, in steps of at
    least 2 (a commit at T writes its redo record's "done" at T + 1, which must stay below the
    next commit's T)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            now = time.time_ns() // 1000
            self._last = max(now, self._last + 2)
            return self._last


_CLOCK = _Clock()


class _Row(NamedTuple):
    collection: str
    pk: str
    sk: str
    text: str | None  # the document as JSON; None deletes the row
    size: int  # estimated bytes in a mutation


def _size(collection: str, pk: str, sk: str, text: str | None) -> int:
    n = len(collection) + len(pk) + len(sk) + _ROW_OVERHEAD
    if text is not None:
        n += len(text) if text.isascii() else len(text.encode())
    if not (collection.isascii() and pk.isascii() and sk.isascii()):
        n += 3 * (len(collection) + len(pk) + len(sk))
    return n


def _collapse(changes: Sequence[Change]) -> list[_Row]:
    """The last change per key, serialized (raises before any I/O if a value is not JSON)."""
    last: dict[tuple[str, str, str], str | None] = {}
    for ch in changes:
        if isinstance(ch, Put):
            last[(ch.collection, ch.pk, ch.sk)] = _dumps(ch.value)
        elif isinstance(ch, Delete):
            last[(ch.collection, ch.pk, ch.sk)] = None
        else:
            raise TypeError(f"not a change: {ch!r}")
    return [_Row(c, p, s, t, _size(c, p, s, t)) for (c, p, s), t in last.items()]


class PreparedCommit(NamedTuple):
    """Changes collapsed and serialized by `CassandraStore.prepare_commit`."""

    rows: list[_Row]


def _encode_entry(row: _Row) -> str:
    value = "null" if row.text is None else row.text
    return f"[{_dumps(row.collection)},{_dumps(row.pk)},{_dumps(row.sk)},{value}]"


def _decode_entries(text: str) -> list[_Row]:
    out: list[_Row] = []
    for c, p, s, doc in _loads(text):
        t = None if doc is None else _dumps(doc)
        out.append(_Row(c, p, s, t, _size(c, p, s, t)))
    return out


@dataclass
class _Intent:
    consumer: str
    writer: str
    commit_ts: int
    commit_id: uuid.UUID
    checkpoint: dict[int, int]
    chunks: int


# ---------------------------------------------------------------------- the store


class CassandraStore(ProjectionStore):
    """See the module docstring and docs/cassandra-store.md."""

    def __init__(self, url: str, *, write_latency: Callable[[float], None] | None = None) -> None:
        self.url = url
        self.config = cfg = parse_url(url)
        self.write_latency = write_latency
        """Called with the seconds each successful commit took (e.g. a Prometheus histogram's observe)."""
        self._closed = False
        self._cluster, self._session = connect(cfg)
        try:
            self._open()
        except BaseException:
            self._cluster.shutdown()
            raise

    def _open(self) -> None:
        from projections import migrate

        cfg = self.config
        if cfg.migrate:
            migrate.migrate(cfg, session=self._session, out=logger.info)
        migrate.check_schema(self._session, cfg)
        session = self._session
        try:
            session.set_keyspace(cfg.keyspace)
            fail = parse_data_size(server_setting(session, "batch_size_fail_threshold"), _DEFAULT_BATCH_FAIL)
            max_mutation = parse_data_size(
                server_setting(session, "max_mutation_size"), _DEFAULT_MAX_MUTATION
            )
            self._prepare()
        except DRIVER_ERRORS as exc:
            raise driver_error(cfg, exc, "prepare the store's statements") from exc
        self.server_batch_limit = fail * 9 // 10
        """What any multi-partition batch may weigh (estimated): 90 % of batch_size_fail_threshold."""
        self.batch_limit = cfg.batch_bytes if cfg.batch_bytes is not None else self.server_batch_limit
        """Largest estimated size of a commit written as one logged batch; bigger ones are staged."""
        self.mutation_limit = max(64 * 1024, max_mutation // 2)
        """Largest estimated size of one single-partition write (a redo chunk, a partition's rows)."""
        self._instance = uuid.uuid4().hex[:16]
        self._slots_lock = threading.Lock()
        self._free_slots: list[int] = []
        self._slot_seq = itertools.count()
        self._busy: set[str] = set()
        self._doubtful_slots: dict[str, set[tuple[str, int]]] = defaultdict(set)
        self._doubtful_batches: dict[str, list[Any]] = defaultdict(list)

    def _prepare(self) -> None:
        p = self._session.prepare
        self._q_get = p("SELECT value FROM docs WHERE collection=? AND pk=? AND sk=?")
        self._q_scan: dict[tuple[bool, bool, bool], Any] = {}
        for has_end, reverse, has_limit in itertools.product((False, True), repeat=3):
            cql = "SELECT sk, value FROM docs WHERE collection=? AND pk=? AND sk>=?"
            cql += " AND sk<?" if has_end else ""
            cql += " ORDER BY sk DESC" if reverse else ""
            cql += " LIMIT ?" if has_limit else ""
            self._q_scan[(has_end, reverse, has_limit)] = p(cql)
        self._q_partitions = p("SELECT DISTINCT collection, pk FROM docs")
        self._q_partition = p("SELECT sk, value FROM docs WHERE collection=? AND pk=?")
        self._q_put = p("INSERT INTO docs (collection, pk, sk, value) VALUES (?, ?, ?, ?) USING TIMESTAMP ?")
        self._q_delete = p("DELETE FROM docs USING TIMESTAMP ? WHERE collection=? AND pk=? AND sk=?")
        self._q_cp_put = p(
            "INSERT INTO checkpoints (consumer, log_partition, log_offset) VALUES (?, ?, ?) USING TIMESTAMP ?"
        )
        self._q_cp_get = p("SELECT log_partition, log_offset FROM checkpoints WHERE consumer=?")
        self._q_seal = p(
            "INSERT INTO commit_intents (consumer, writer, commit_ts, commit_id, state, checkpoint, chunks, "
            "changes) VALUES (?, ?, ?, ?, 'sealed', ?, ?, ?) USING TIMESTAMP ?"
        )
        self._q_done = p(
            "UPDATE commit_intents USING TIMESTAMP ? SET state='done' WHERE consumer=? AND writer=?"
        )
        self._q_intents = p(
            "SELECT writer, commit_ts, commit_id, state, checkpoint, chunks "
            "FROM commit_intents WHERE consumer=?"
        )
        self._q_inline = p("SELECT commit_id, changes FROM commit_intents WHERE consumer=? AND writer=?")
        self._q_forget = p("DELETE FROM commit_intents WHERE consumer=? AND writer=?")
        self._q_chunk_put = p(
            "INSERT INTO commit_chunks (consumer, writer, chunk, commit_id, changes) VALUES (?, ?, ?, ?, ?) "
            "USING TIMESTAMP ?"
        )
        self._q_chunks = p(
            "SELECT chunk, commit_id, changes FROM commit_chunks WHERE consumer=? AND writer=?"
        )
        self._q_chunks.fetch_size = 2  # chunks are up to mutation_limit each: keep few in memory
        self._q_chunks_forget = p("DELETE FROM commit_chunks WHERE consumer=? AND writer=?")

    # ------------------------------------------------------------------ plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable(f"{self.config.where}: the store is closed")

    def _error(self, exc: BaseException, doing: str) -> LabelweaveError:
        return driver_error(self.config, exc, doing)

    def _execute(self, statement: Any, params: Any = None, *, timeout: Any = None) -> Any:
        if timeout is None:
            return self._session.execute(statement, params)
        return self._session.execute(statement, params, timeout=timeout)

    def _retrying(self, doing: str, fn: Callable[[], None]) -> None:
        """Run an idempotent write, retrying transient failures; raise the mapped error after the
        last attempt (validation errors at once)."""
        delay = 0.1
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                fn()
                return
            except DRIVER_ERRORS as exc:
                if is_validation_error(exc) or attempt == _ATTEMPTS or self._closed:
                    raise
                logger.warning(
                    "%s: %s failed (attempt %d), retrying: %r", self.config.where, doing, attempt, exc
                )
                time.sleep(delay)
                delay *= 4

    def _concurrently(self, statements: list[tuple[Any, Any]]) -> None:
        if len(statements) == 1:
            self._execute(*statements[0])
            return
        execute_concurrent(self._session, statements, concurrency=32, raise_on_first_error=True)

    # ------------------------------------------------------------------ reads

    def get(self, collection: str, pk: str, sk: str = "") -> Doc | None:
        self._check_open()
        try:
            row = self._execute(self._q_get, (collection, pk, sk)).one()
        except DRIVER_ERRORS as exc:
            raise self._error(exc, f"read {collection}/{pk}/{sk}") from exc
        return None if row is None else _loads(row[0])

    def scan(
        self,
        collection: str,
        pk: str,
        *,
        start: str = "",
        end: str | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> list[tuple[str, Doc]]:
        self._check_open()
        if (limit is not None and limit <= 0) or (end is not None and end <= start):
            return []
        params: list[object] = [collection, pk, start]
        if end is not None:
            params.append(end)
        if limit is not None:
            params.append(limit)
        query = self._q_scan[(end is not None, reverse, limit is not None)]
        try:
            rows = list(self._execute(query, params))
        except DRIVER_ERRORS as exc:
            raise self._error(exc, f"scan {collection}/{pk}") from exc
        return [(sk, _loads(value)) for sk, value in rows]

    def checkpoint(self, consumer: str) -> dict[int, int]:
        """The consumer's checkpoint, after finishing every commit of it that is in doubt (a staged
        commit whose writer died, or a failed commit of this instance): a runner that resumes from
        the answer finds exactly the rows of the commits it covers.

        "In doubt" is every sealed commit this instance is not writing right now, so a commit that
        another *live* instance is still finishing (say, the previous owner of a partition during
        a faust rebalance) is finished here too. That is deliberate: the store cannot tell a dead
        writer from a slow one without heartbeats, and finishing twice is harmless, since the
        roll-forward rewrites the same rows with the commit's own write timestamp and the
        checkpoint only moves forward (`max`). It costs the redundant writes and a warning."""
        self._check_open()
        try:
            doubtful_slots = self._resolve_doubtful_batches(consumer)
            cp_future = self._session.execute_async(self._q_cp_get, (consumer,))
            intents = list(self._execute(self._q_intents, (consumer,)))
            checkpoint = {int(p): int(o) for p, o in cp_future.result()}
            with self._slots_lock:
                busy = set(self._busy)
            # Sealed records not being written right now by this instance: their writer died or
            # failed (this instance's own failed staged commits included). Finish them.
            pending = [row for row in intents if row[3] == "sealed" and row[0] not in busy]
            for writer, commit_ts, commit_id, _, cp_text, chunks in pending:
                intent = _Intent(
                    consumer, writer, int(commit_ts), commit_id, _checkpoint_of(cp_text), int(chunks or 0)
                )
                self._roll_forward(intent)
            if pending:
                checkpoint = {int(p): int(o) for p, o in self._execute(self._q_cp_get, (consumer,))}
            if doubtful_slots:  # resolved now: the slots may be reused
                with self._slots_lock:
                    self._doubtful_slots[consumer] -= doubtful_slots
                    self._free_slots.extend(slot for _, slot in doubtful_slots)
            self._forget_stale_writers(consumer, intents, busy)
        except DRIVER_ERRORS as exc:
            raise self._error(exc, f"read the checkpoint of {consumer!r}") from exc
        return checkpoint

    def items(self) -> Iterable[tuple[str, str, str, Doc]]:
        """Every row in (collection, pk, sk) order: the partition keys are gathered (one DISTINCT
        scan, token order) and sorted here, then each partition is paged through in sk order, with
        the queries of the next `_READ_AHEAD` partitions in flight (one query per partition at a
        time took ~0.85 ms each: 52 s for the ~60k partitions of a 10k-task rebuild).
        Memory: the partition keys plus up to `_READ_AHEAD` first pages. Not a snapshot: commits
        made meanwhile may show."""
        self._check_open()
        try:
            partitions = sorted((c, p) for c, p in self._execute(self._q_partitions))
        except DRIVER_ERRORS as exc:
            raise self._error(exc, "list the partitions") from exc
        return self._iter_partitions(partitions)

    def _iter_partitions(self, partitions: list[tuple[str, str]]) -> Iterator[tuple[str, str, str, Doc]]:
        pending: deque[tuple[str, str, Any]] = deque()
        ahead = iter(partitions)

        def read_ahead() -> None:
            for collection, pk in itertools.islice(ahead, _READ_AHEAD - len(pending)):
                future = self._session.execute_async(self._q_partition, (collection, pk))
                pending.append((collection, pk, future))

        while True:
            try:
                read_ahead()
            except DRIVER_ERRORS as exc:
                raise self._error(exc, "read partitions") from exc
            if not pending:
                return
            collection, pk, future = pending.popleft()
            try:
                for sk, value in future.result():  # later pages, if any, are fetched as it iterates
                    yield collection, pk, sk, _loads(value)
            except DRIVER_ERRORS as exc:
                raise self._error(exc, f"read partition {collection}/{pk}") from exc

    # ------------------------------------------------------------------ writes

    def commit(self, consumer: str, changes: Sequence[Change], checkpoint: Checkpoint) -> None:
        self.commit_prepared(consumer, self.prepare_commit(changes), checkpoint)

    def prepare_commit(self, changes: Sequence[Change]) -> PreparedCommit:
        """The CPU half of a commit: collapse `changes` to the last one per key and serialize the
        documents. The result no longer refers to the documents, so the caller may go on changing
        them while another thread writes it with `commit_prepared` (the rebuild's pipeline)."""
        return PreparedCommit(_collapse(changes))

    def commit_prepared(
        self, consumer: str, prepared: PreparedCommit, checkpoint: Checkpoint, *, bulk: bool = False
    ) -> None:
        """`commit()` of changes serialized by `prepare_commit`.

        `bulk=True` is for loading a store that was just cleared and is rebuilt from scratch if
        anything fails (`consumers.rebuild`): the commit is staged without a redo record, so its
        data is written once instead of twice. If it does not finish (the process dies, or it
        raises), its sealed record makes `checkpoint(consumer)` raise `FailedPrecondition` (the
        projections must be rebuilt) instead of letting a runner resume on partial rows.
        """
        self._check_open()
        rows = prepared.rows
        cps = sorted((int(p), int(o)) for p, o in checkpoint.items())
        started = time.perf_counter()
        ts = _CLOCK.next()
        size = sum(r.size for r in rows) + _ROW_OVERHEAD * len(cps)
        if not rows and not cps:
            return
        if not rows or (
            not bulk
            and self.config.commit == "batch"
            and size <= self.batch_limit
            and len(rows) + len(cps) <= _MAX_BATCH_STATEMENTS
        ):
            self._commit_logged(consumer, rows, cps, ts)
        else:
            self._commit_staged(consumer, rows, cps, ts, bulk=bulk)
        if self.write_latency is not None:
            self.write_latency(time.perf_counter() - started)

    def _add_row(self, batch: Any, row: _Row, ts: int) -> None:
        if row.text is None:
            batch.add(self._q_delete, (ts, row.collection, row.pk, row.sk))
        else:
            batch.add(self._q_put, (row.collection, row.pk, row.sk, row.text, ts))

    def _commit_logged(self, consumer: str, rows: list[_Row], cps: list[tuple[int, int]], ts: int) -> None:
        """One LOGGED batch (a checkpoint-only commit is one partition: no batchlog needed)."""
        batch = BatchStatement(BatchType.LOGGED)
        for row in rows:
            self._add_row(batch, row, ts)
        for part, off in cps:
            batch.add(self._q_cp_put, (consumer, part, off, off))
        try:
            self._retrying("commit", lambda: self._execute(batch))
        except DRIVER_ERRORS as exc:
            if not is_validation_error(exc):
                # The batch may still be applied (the batchlog replays it): re-run it, same
                # timestamps, before the next checkpoint read answers.
                with self._slots_lock:
                    self._doubtful_batches[consumer].append(batch)
            raise self._error(exc, f"commit {len(rows)} rows for {consumer!r}") from exc

    def _take_slot(self) -> tuple[str, int]:
        with self._slots_lock:
            slot = self._free_slots.pop() if self._free_slots else next(self._slot_seq)
            writer = f"{self._instance}.{slot}"
            self._busy.add(writer)
            return writer, slot

    def _release_slot(self, writer: str, slot: int, *, consumer: str | None = None) -> None:
        """Free the slot, or (with `consumer`) keep it reserved until its commit is resolved."""
        with self._slots_lock:
            self._busy.discard(writer)
            if consumer is None:
                self._free_slots.append(slot)
            else:
                self._doubtful_slots[consumer].add((writer, slot))

    def _commit_staged(
        self, consumer: str, rows: list[_Row], cps: list[tuple[int, int]], ts: int, *, bulk: bool = False
    ) -> None:
        writer, slot = self._take_slot()
        commit_id = uuid.uuid4()
        chunks = [] if bulk else self._chunk(rows)
        intent = _Intent(consumer, writer, ts, commit_id, dict(cps), _BULK if bulk else len(chunks))
        sealing = False
        try:
            cp_text = json.dumps({str(p): o for p, o in cps})
            if bulk:  # no redo record: the seal only marks the rows as in progress
                seal = (consumer, writer, ts, commit_id, cp_text, _BULK, UNSET_VALUE, ts)
            elif len(chunks) == 1 and len(chunks[0]) <= _INLINE_INTENT:
                intent.chunks = 0
                seal = (consumer, writer, ts, commit_id, cp_text, 0, chunks[0], ts)
            else:
                self._retrying(
                    "write a commit's redo record",
                    lambda: self._concurrently(
                        [
                            (self._q_chunk_put, (consumer, writer, i, commit_id, text, ts))
                            for i, text in enumerate(chunks)
                        ]
                    ),
                )
                seal = (consumer, writer, ts, commit_id, cp_text, len(chunks), UNSET_VALUE, ts)
            sealing = True
            self._retrying("seal a commit's redo record", lambda: self._execute(self._q_seal, seal))
            pack = _BULK_PACK_PARTITIONS if bulk else _PACK_PARTITIONS
            self._retrying("apply a staged commit", lambda: self._apply(rows, ts, pack=pack))
            self._retrying("finish a staged commit", lambda: self._finish(intent))
        except DRIVER_ERRORS as exc:
            if sealing and not is_validation_error(exc):
                self._release_slot(writer, slot, consumer=consumer)
            else:
                self._release_slot(writer, slot)
            raise self._error(exc, f"commit {len(rows)} rows for {consumer!r} (staged)") from exc
        except BaseException:
            self._release_slot(writer, slot, consumer=consumer if sealing else None)
            raise
        self._release_slot(writer, slot)

    def _chunk(self, rows: list[_Row]) -> list[str]:
        """The redo record: JSON arrays of [collection, pk, sk, document|null], each chunk at most
        `mutation_limit / 2` bytes (a single larger entry gets a chunk of its own)."""
        limit = self.mutation_limit // 2
        chunks: list[str] = []
        current: list[str] = []
        size = 0
        for row in rows:
            entry = _encode_entry(row)
            if current and size + row.size > limit:
                chunks.append("[" + ",".join(current) + "]")
                current, size = [], 0
            current.append(entry)
            size += row.size
        chunks.append("[" + ",".join(current) + "]")
        return chunks

    def _apply(self, rows: list[_Row], ts: int, *, pack: int = _PACK_PARTITIONS) -> None:
        """Write the rows in UNLOGGED batches, concurrently. The rows of one partition always go
        together (one mutation: applied in isolation), split only beyond `mutation_limit / 2`.
        Small partitions share a batch (at most `pack` of them, within
        `server_batch_limit`: multi-partition batches are size-checked); a big one is a batch of its own
        (single-partition batches are exempt from the batch size thresholds)."""
        by_partition: dict[tuple[str, str], list[_Row]] = defaultdict(list)
        for row in rows:
            by_partition[(row.collection, row.pk)].append(row)
        limit = self.mutation_limit // 2
        pack_limit = self.server_batch_limit
        groups: list[tuple[list[_Row], int]] = []  # the rows of one partition (or a slice), size
        for part_rows in by_partition.values():
            group: list[_Row] = []
            size = 0
            for row in part_rows:
                if group and (size + row.size > limit or len(group) >= _MAX_BATCH_STATEMENTS):
                    groups.append((group, size))
                    group, size = [], 0
                group.append(row)
                size += row.size
            groups.append((group, size))
        statements: list[tuple[Any, Any]] = []
        batch, packed, packed_size = BatchStatement(BatchType.UNLOGGED), 0, 0
        for group, size in groups:
            if size > pack_limit:
                alone = BatchStatement(BatchType.UNLOGGED)
                for row in group:
                    self._add_row(alone, row, ts)
                statements.append((alone, None))
                continue
            if packed and (
                packed >= pack
                or packed_size + size > pack_limit
                or len(batch) + len(group) > _MAX_BATCH_STATEMENTS
            ):
                statements.append((batch, None))
                batch, packed, packed_size = BatchStatement(BatchType.UNLOGGED), 0, 0
            for row in group:
                self._add_row(batch, row, ts)
            packed += 1
            packed_size += size
        if packed:
            statements.append((batch, None))
        if statements:
            self._concurrently(statements)

    def _finish(self, intent: _Intent) -> None:
        """Checkpoint rows and the record's "done" in one write: same partition key, one mutation."""
        batch = BatchStatement(BatchType.LOGGED)
        for part, off in sorted(intent.checkpoint.items()):
            batch.add(self._q_cp_put, (intent.consumer, part, off, off))
        batch.add(self._q_done, (intent.commit_ts + 1, intent.consumer, intent.writer))
        self._execute(batch)

    def _load_intent(self, intent: _Intent) -> list[_Row] | None:
        """The changes of a sealed record, or None if the writer has moved on (then it was done)."""
        if intent.chunks == 0:
            row = self._execute(self._q_inline, (intent.consumer, intent.writer)).one()
            if row is None or row[0] != intent.commit_id:
                return None
            return _decode_entries(row[1])
        rows: list[_Row] = []
        seen = 0
        for chunk, commit_id, text in self._execute(self._q_chunks, (intent.consumer, intent.writer)):
            if chunk >= intent.chunks:
                break
            if commit_id != intent.commit_id or chunk != seen:
                return None
            rows.extend(_decode_entries(text))
            seen += 1
        if seen != intent.chunks:
            return None
        return rows

    def _roll_forward(self, intent: _Intent) -> None:
        if intent.chunks == _BULK:
            raise FailedPrecondition(
                f"{self.config.where}: bulk commit {intent.commit_id} of consumer {intent.consumer!r} "
                f"(writer {intent.writer}, a rebuild) did not finish and its changes were not recorded; "
                "the projections of this consumer must be rebuilt (labelweave rebuild)"
            )
        rows = self._load_intent(intent)
        if rows is None:
            # Chunks overwritten or missing: the writer sealed a newer commit, so this one is done.
            # Anything else is a broken record; say so rather than guess.
            current = [r for r in self._execute(self._q_intents, (intent.consumer,)) if r[0] == intent.writer]
            if current and current[0][3] == "sealed" and current[0][2] == intent.commit_id:
                raise FailedPrecondition(
                    f"{self.config.where}: the redo record of commit {intent.commit_id} of consumer "
                    f"{intent.consumer!r} (writer {intent.writer}) is incomplete; the projections of this "
                    "consumer must be rebuilt (labelweave rebuild)"
                )
            return
        logger.warning(
            "%s: finishing commit %s of consumer %r left by writer %s (%d rows, checkpoint %s)",
            self.config.where,
            intent.commit_id,
            intent.consumer,
            intent.writer,
            len(rows),
            intent.checkpoint,
        )
        self._retrying("re-apply a staged commit", lambda: self._apply(rows, intent.commit_ts))
        self._retrying("finish a staged commit", lambda: self._finish(intent))

    def _resolve_doubtful_batches(self, consumer: str) -> set[tuple[str, int]]:
        """Re-run this instance's failed logged batches of `consumer` (same timestamps: they may
        land later anyway, so make them land now) and return its failed staged commits' slots
        (their sealed records, if the seal landed, are then rolled forward by the caller)."""
        with self._slots_lock:
            batches = list(self._doubtful_batches.get(consumer, ()))
            slots = set(self._doubtful_slots.get(consumer, ()))
        for batch in batches:
            self._execute(batch)
            with self._slots_lock:
                self._doubtful_batches[consumer].remove(batch)
        return slots

    def _forget_stale_writers(self, consumer: str, intents: list[Any], busy: set[str]) -> None:
        """Remove "done" records of writers idle for a day (dead processes, mostly); best effort."""
        cutoff = (time.time() - _STALE_WRITER) * 1_000_000
        for writer, commit_ts, _, state, _, _ in intents:
            if state == "done" and writer not in busy and commit_ts < cutoff:
                try:
                    self._execute(self._q_forget, (consumer, writer))
                    self._execute(self._q_chunks_forget, (consumer, writer))
                except DRIVER_ERRORS as exc:  # pragma: no cover - best effort
                    logger.info("could not remove the stale redo record of %s: %r", writer, exc)

    def clear(self) -> None:
        """TRUNCATE the tables (needs every replica up). Stop every writer of the store first."""
        self._check_open()
        timeout = max(60.0, self.config.request_timeout)
        try:
            for table in ("docs", "checkpoints", "commit_intents", "commit_chunks"):
                self._execute(f"TRUNCATE {table}", timeout=timeout)
        except DRIVER_ERRORS as exc:
            raise self._error(exc, "truncate the store") from exc
        with self._slots_lock:
            self._doubtful_batches.clear()
            for slots in self._doubtful_slots.values():
                self._free_slots.extend(slot for _, slot in slots)
            self._doubtful_slots.clear()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cluster.shutdown()


def _checkpoint_of(text: str | None) -> dict[int, int]:
    return {int(p): int(o) for p, o in (_loads(text) if text else {}).items()}


__all__ = [
    "DICT_PROFILE",
    "DRIVER_ERRORS",
    "CassandraConfig",
    "CassandraStore",
    "PreparedCommit",
    "connect",
    "driver_error",
    "parse_url",
]
