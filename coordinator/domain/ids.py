"""Identifier rules and time conversions shared by the aggregates.

Ids end up in stream names (`task:<id>`), URLs and file names of exports, so they are kept to a
conservative alphabet that needs no escaping anywhere. Time conversions live here rather than in
the event log so the domain does not depend on infrastructure modules.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from coordinator.errors import InvalidArgument

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)


def is_valid_id(value: str) -> bool:
    # fullmatch: `$` alone would accept a trailing newline.
    return _ID_RE.fullmatch(value) is not None


def check_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument("required", field=field)
    if not is_valid_id(value):
        raise InvalidArgument(
            f"{value!r} is not a valid id: 1-128 characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit",
            field=field,
        )


def to_timestamp(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(UTC))
    return ts


def to_datetime(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def require_aware(now: datetime, field: str = "now") -> None:
    """Naive datetimes would be read as local time by `astimezone` and compare wrongly with stored UTC."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgument("time must be timezone-aware", field=field)
