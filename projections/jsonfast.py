"""JSON encoding and decoding of stored documents, with orjson.

Projections encode and decode hundreds of thousands of small documents per rebuild and per
minute of load; orjson does both about 3 times (encode) and twice (decode) as fast as the standard
library's C accelerator on our documents (docs/benchmarks.md, pass 4). Its compact output reads
back as `json.dumps(value, ensure_ascii=False, separators=(",", ":"))` does, and is the same text
but for the spelling of float exponents (`1.5e-7`, not `1.5e-07`); both are property-tested in
tests/unit/test_jsonfast.py. Checksums hash decoded documents, so a store written by either
encoder has the same checksum. Where the two differ the standard library takes over, so nothing
a store held before becomes unreadable:

- integers beyond 64 bits, which orjson refuses, are encoded by `json`;
- `NaN` and `Infinity` tokens, which `json` wrote and orjson refuses to read, are decoded by
  `json`. (Documents hold counts and sums, never a non-finite float; orjson would write one as
  `null`, as JSON has no such number.)
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # int keys become strings, as with json
_fallback_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_orjson_dumps = orjson.dumps
_orjson_loads = orjson.loads
_EncodeError = orjson.JSONEncodeError
_DecodeError = orjson.JSONDecodeError


def compact_json(value: Any) -> str:
    """`value` as compact JSON text (non-ASCII characters kept as they are)."""
    try:
        return _orjson_dumps(value, option=_OPTIONS).decode()
    except _EncodeError:
        return _fallback_encode(value)  # e.g. an integer beyond 64 bits


def loads(text: str | bytes) -> Any:
    """The document encoded in `text`."""
    try:
        return _orjson_loads(text)
    except _DecodeError:
        return json.loads(text)  # e.g. NaN written by an older encoder, or a real error
