"""Compact JSON encoding for stored documents, without per-call encoder set-up.

`json.JSONEncoder.encode` builds a new C encoder on every call; projections encode hundreds of
thousands of small documents per rebuild, so the C encoder is built once here. Output is
identical to `json.dumps(value, ensure_ascii=False, separators=(",", ":"))`, except that
circular references are not detected (documents are trees; a cycle fails with RecursionError).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_fallback = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _default(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make() -> Callable[[Any], str]:
    try:
        from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - other Python implementations
        return _fallback
    if c_make_encoder is None or c_encode_basestring is None:  # pragma: no cover
        return _fallback
    encoder = c_make_encoder(None, _default, c_encode_basestring, None, ":", ",", False, False, True)

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return c_encode_basestring(value)  # type: ignore[no-any-return]
        return "".join(encoder(value, 0))

    return encode


compact_json: Callable[[Any], str] = _make()
