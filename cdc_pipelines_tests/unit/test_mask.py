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
    absent = SecretsConfig(provider="file", path=str(tmp_path / "nowhere.properties"))
    with pytest.raises(ConfigError, match=r"nowhere\.properties.*CDC_CONNECT_SECRETS_FILE"):
        read_mask_salt(absent)
    present = tmp_path / "other.properties"
    present.write_text("postgres.user=cdc\n")
    with pytest.raises(ConfigError, match=r"no 'mask\.salt' entry"):
        read_mask_salt(SecretsConfig(provider="file", path=str(present)))
    table = resolve(parse_config(DECLARATION.format(path=present)), "shop.customers")
    with pytest.raises(ConfigError, match="hashed, but the salt was not loaded"):
        mask_row(table.spec, ["email"], ["x"], None)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("mask.salt=\n", "is empty"),
        ("mask.salt =   \n", "is empty"),
        (
            "mask.salt=${file:/etc/kafka-connect/secrets/salt.properties:salt}\n",
            "holds an unresolved",
        ),
        ("mask.salt=${CDC_MASK_SALT}\n", "holds an unresolved"),
    ],
)
def test_an_empty_or_unresolved_salt_is_refused(tmp_path: Path, line: str, reason: str) -> None:
    secrets = tmp_path / "postgres.properties"
    secrets.write_text(line + line.replace("mask.salt", "salt.of.masks", 1))
    with pytest.raises(
        ConfigError, match=rf"mask salt 'mask\.salt' in .*postgres\.properties {reason}"
    ):
        read_mask_salt(SecretsConfig(provider="file", path=str(secrets)))
    table = resolve(parse_config(DECLARATION.format(path=secrets)), "shop.customers")
    with pytest.raises(ConfigError, match=reason):
        with_mask_salt(table)
    with pytest.raises(ConfigError, match="hashed, but the salt is empty"):
        mask_row(table.spec, ["email"], ["x"], b"")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"mask.salt=s3cr3t\\uZZZZ\n", "malformed"),
        (b"mask.salt=s3cr3t\xff\xfe\n", "not UTF-8"),
    ],
    ids=["bad-unicode-escape", "not-utf8"],
)
def test_a_malformed_secrets_file_is_a_configuration_error_without_its_values(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    secrets = tmp_path / "postgres.properties"
    secrets.write_bytes(content)
    with pytest.raises(ConfigError, match=reason) as raised:
        read_mask_salt(SecretsConfig(provider="file", path=str(secrets)))
    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize(
    ("column", "mode", "reason"),
    [
        ("blob", "redact", "cannot mask"),
        ("list<text>", "redact", "cannot mask"),
        ("frozen<set<text>>", "hash", "cannot mask"),
        ("map<text, text>", "redact", "cannot mask"),
        ("tuple<int, text>", "hash", "cannot mask"),
        ("frozen<address>", "redact", "cannot mask"),
        ("decimal", "hash", "use redact or exclude"),
        ("inet", "hash", "use redact or exclude"),
        ("duration", "hash", "use redact or exclude"),
    ],
)
def test_masks_the_stream_cannot_reproduce_are_refused_at_load(
    column: str, mode: str, reason: str
) -> None:
    text = (
        "user_types:\n  address: {street: text}\n"
        "tables:\n  - source: ks.t\n    target: s.t\n    partition_key: [id]\n"
        f"    columns: {{id: int, x: '{column}'}}\n    mask: {{x: {mode}}}\n"
    )
    with pytest.raises(ConfigError, match=rf"tables\[0\]\(ks\.t\)\.mask: .*{reason}"):
        parse_config(text)


JAVA_PROPERTIES_DUMP = """
import java.io.FileReader;
import java.util.Base64;
import java.util.Properties;

public class Dump {
  public static void main(String[] args) throws Exception {
    Properties properties = new Properties();
    try (FileReader reader = new FileReader(args[0], java.nio.charset.StandardCharsets.UTF_8)) {
      properties.load(reader);
    }
    Base64.Encoder b64 = Base64.getEncoder();
    for (String key : properties.stringPropertyNames()) {
      System.out.println(b64.encodeToString(key.getBytes("UTF-8")) + " "
          + b64.encodeToString(properties.getProperty(key).getBytes("UTF-8")));
    }
  }
}
"""

PROPERTIES_TEXT = (
    "# a comment\n! another\nmask.salt=pepper  \nk2 value two\nk3:v3\n  k4 = v4\n"
    "key\\=x = esc\\u0041\\tb\nlong = a\\\n    b\\\\\nempty\nspaced   :   v  \n"
    "k5=\\ leading blank kept\nk6 =: colon value\n"
)


def test_properties_are_read_as_java_reads_them(tmp_path: Path) -> None:
    """Kafka's FileConfigProvider reads the salt with java.util.Properties.load: so must we."""
    import base64
    import shutil
    import subprocess

    java = shutil.which("java")
    assert java, "java is needed (the devstack's Kafka runs on it)"
    source = tmp_path / "Dump.java"
    source.write_text(JAVA_PROPERTIES_DUMP)
    properties = tmp_path / "secrets.properties"
    properties.write_text(PROPERTIES_TEXT, encoding="utf-8")
    dumped = subprocess.run(
        [java, str(source), str(properties)], capture_output=True, text=True, check=True
    ).stdout
    by_java = {
        base64.b64decode(k).decode(): base64.b64decode(v).decode()
        for k, v in (line.split(" ") for line in dumped.splitlines())
    }
    assert read_properties(properties) == by_java
    assert by_java["mask.salt"] == "pepper  "  # trailing blanks are part of the salt
