"""Stored documents are encoded with orjson: the text must read back as what `json` wrote before,
and be the same text except for how a float's exponent is spelled (1.5e-7, not 1.5e-07)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from projections.jsonfast import compact_json, loads


def reference(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


exact = st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text()
floats = st.floats(allow_nan=False, allow_infinity=False)


def documents(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(st.text(max_size=8) | st.integers(-1000, 1000), inner, max_size=5)
        ),
        max_leaves=30,
    )


@given(documents(exact))
def test_text_equals_the_standard_library_without_floats(value: Any) -> None:
    assert compact_json(value) == reference(value)


@given(documents(exact | floats))
def test_reads_back_as_the_standard_library_does(value: Any) -> None:
    text = compact_json(value)
    assert json.loads(text) == json.loads(reference(value))
    assert loads(text) == loads(reference(value)) == json.loads(reference(value))


def test_what_orjson_refuses_falls_back_to_json() -> None:
    huge = {"sum": 2**70, "neg": -(2**65)}
    assert compact_json(huge) == reference(huge)
    assert loads(compact_json(huge)) == huge
    assert compact_json("\ud800") == reference("\ud800")  # a lone surrogate


def test_non_finite_floats_written_by_json_still_read() -> None:
    legacy = reference({"x": float("inf"), "y": float("-inf")})
    assert loads(legacy) == {"x": float("inf"), "y": float("-inf")}
    nan = loads(reference([float("nan")]))[0]
    assert nan != nan


def test_bytes_and_unicode() -> None:
    doc = {"name": "Zoë 東京", "tab": "a\tb\u2028", "nested": [{"k": 1.5e-7}, [], {}]}
    assert compact_json(doc) == reference(doc).replace("e-07", "e-7")
    assert loads(compact_json(doc).encode()) == doc


def test_bad_text_is_an_error() -> None:
    try:
        loads("{not json")
    except ValueError as exc:
        assert "Expecting" in str(exc) or "expecting" in str(exc).lower()
    else:  # pragma: no cover
        raise AssertionError("accepted bad JSON")
