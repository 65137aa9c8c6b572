"""Masked values as the stream writes them, and the salt read where Connect reads it."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc_pipelines.config import MaskMode, SecretsConfig, parse_config
from cdc_pipelines.connect.secrets import read_mask_salt, read_properties, with_mask_salt
from cdc_pipelines.cqltypes import parse_cql_type
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.replicated_table import resolve
from cdc_pipelines.rows.mask import mask_row, mask_value, masked_type

SALT = b"pepper"


@given(st.text(st.characters(exclude_categories=("Cs",))))
def test_a_hashed_text_is_the_hex_sha256_of_salt_and_value(value: str) -> None:
    # HashFields: sha.update(salt); sha.digest(value as UTF-8); hex.
    expected = hashlib.sha256(SALT + value.encode()).hexdigest()
    assert mask_value(parse_cql_type("text"), MaskMode.HASH, value, SALT) == expected


def test_string_carried_values_hash_their_connector_text_and_redact_to_empty() -> None:
    key = uuid.UUID(int=7)
    hashed = mask_value(parse_cql_type("uuid"), MaskMode.HASH, key, SALT)
    assert hashed == hashlib.sha256(SALT + str(key).encode()).hexdigest()
    assert mask_value(parse_cql_type("inet"), MaskMode.REDACT, "10.0.0.1", SALT) == ""
    assert masked_type(parse_cql_type("uuid")).name == "text"
    assert masked_type(parse_cql_type("int")).name == "int"


@pytest.mark.parametrize(
    ("cql", "zero"),
    [
        ("int", 0),
        ("double", 0.0),
        ("boolean", False),
        ("timestamp", dt.datetime(1970, 1, 1, tzinfo=dt.UTC)),
        ("date", dt.date(1970, 1, 1)),
        ("time", 0),
    ],
)
def test_other_masked_values_become_their_types_zero(cql: str, zero: object) -> None:
    for mode in MaskMode:
        assert mask_value(parse_cql_type(cql), mode, 42, SALT) == zero
        assert mask_value(parse_cql_type(cql), mode, None, SALT) is None


def test_a_type_the_stream_cannot_mask_is_named() -> None:
    with pytest.raises(ConfigError, match="blob column cannot be masked"):
        mask_value(parse_cql_type("blob"), MaskMode.REDACT, b"x", SALT)


DECLARATION = """
connectors:
  secrets: {{provider: file, path: "{path}", mask_salt_key: salt.of.masks}}
tables:
  - source: shop.customers
    target: public.customers
    partition_key: [id]
    columns: {{id: int, email: text, phone: text}}
    mask: {{email: hash, phone: redact}}
"""


def test_the_salt_comes_from_connects_properties_file(tmp_path: Path) -> None:
    secrets = tmp_path / "postgres.properties"
    secrets.write_text("# Connect's secrets\npostgres.user=cdc\nsalt.of.masks = pepper\n")
    table = resolve(parse_config(DECLARATION.format(path=secrets)), "shop.customers")
    assert table.mask_salt is None
    salted = with_mask_salt(table)
    assert salted.mask_salt == SALT and "pepper" not in repr(salted)
    row = mask_row(salted.spec, ["id", "email", "phone"], [1, "a@b.c", "555"], salted.mask_salt)
    assert row == [1, hashlib.sha256(SALT + b"a@b.c").hexdigest(), ""]
    assert read_properties(secrets)["postgres.user"] == "cdc"


def test_a_missing_salt_names_the_file_and_the_fix(tmp_path: Path) -> None:
    absent = SecretsConfig(path=str(tmp_path / "nowhere.properties"))
    with pytest.raises(ConfigError, match=r"nowhere\.properties.*CDC_CONNECT_SECRETS_FILE"):
        read_mask_salt(absent)
    present = tmp_path / "other.properties"
    present.write_text("postgres.user=cdc\n")
    with pytest.raises(ConfigError, match=r"no 'mask\.salt' entry"):
        read_mask_salt(SecretsConfig(path=str(present)))
    table = resolve(parse_config(DECLARATION.format(path=present)), "shop.customers")
    with pytest.raises(ConfigError, match="hashed, but the salt was not loaded"):
        mask_row(table.spec, ["email"], ["x"], None)
