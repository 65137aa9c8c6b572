"""The verdict file spells every key as ``json.dumps`` would, on the fast path too."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from cdc_pipelines.reconcile.report import key_json

SCALARS = st.one_of(
    st.integers(),
    st.booleans(),
    st.text(),
    st.uuids(),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.floats(allow_nan=False),
)


@given(st.lists(st.integers(min_value=-(2**80), max_value=2**80), min_size=1, max_size=4))
def test_integer_keys_are_spelled_as_json_spells_them(key: list[int]) -> None:
    assert key_json(tuple(key)) == json.dumps(key)
    assert json.loads(key_json(tuple(key))) == key


@given(st.lists(SCALARS, min_size=1, max_size=4))
def test_any_key_is_spelled_as_json_with_str_fallback(key: list[object]) -> None:
    assert key_json(tuple(key)) == json.dumps(key, default=str)


def test_booleans_are_not_taken_for_integers() -> None:
    assert key_json((True, 1)) == "[true, 1]"
    assert key_json((uuid.UUID(int=7),)) == f'["{uuid.UUID(int=7)}"]'
