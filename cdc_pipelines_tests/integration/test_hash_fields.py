"""The project's HashFields transform, compiled and run against the devstack's Connect jars."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cdc_pipelines_tests.integration.connect_plugin import run_driver

DRIVER = """
import io.cdcpipelines.connect.HashFields;
import java.util.Map;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.SchemaBuilder;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.sink.SinkRecord;

public class Drive {
  public static void main(String[] args) {
    Schema schema = SchemaBuilder.struct().field("id", Schema.INT32_SCHEMA)
        .field("email", Schema.OPTIONAL_STRING_SCHEMA).build();
    Struct row = new Struct(schema).put("id", 1).put("email", "a@b.c");
    for (int i = 0; i + 1 < args.length; i += 2) {
      HashFields<SinkRecord> transform = new HashFields<>();
      try {
        // "secret:<salt>" is given under salt.secret (the generated configs' key), else salt.
        String[] salt = args[i + 1].startsWith("secret:")
            ? new String[] {"salt.secret", args[i + 1].substring(7)}
            : new String[] {"salt", args[i + 1]};
        // "map:<fields>": the record's value is schemaless (a Map), as without schemas.enable.
        boolean schemaless = args[i].startsWith("map:");
        String fields = schemaless ? args[i].substring(4) : args[i];
        transform.configure(Map.of("fields", fields, salt[0], salt[1]));
        SinkRecord record = schemaless
            ? new SinkRecord("ks.t", 0, null, null, null, Map.of("id", 1, "email", "a@b.c"), 0)
            : new SinkRecord("ks.t", 0, null, null, schema, row, 0);
        Object value = transform.apply(record).value();
        Object email = value instanceof Struct s ? s.get("email") : ((Map<?, ?>) value).get("email");
        System.out.println("hashed " + email);
      } catch (RuntimeException e) {
        System.out.println("refused " + e.getMessage());
      }
    }
  }
}
"""


def run_transform(tmp_path: Path, *cases: tuple[str, str]) -> list[str]:
    """One output line per (fields, salt): ``hashed <email>`` or ``refused <message>``."""
    arguments = [value for case in cases for value in case]
    return run_driver(tmp_path, "HashFields.java", DRIVER, *arguments)


def test_hash_fields_hashes_and_refuses_missing_columns_and_unusable_salts(
    tmp_path: Path,
) -> None:
    hashed, by_secret_key, missing, empty, blank, unresolved, schemaless = run_transform(
        tmp_path,
        ("email", "pepper"),
        ("email", "secret:pepper"),
        ("email,phone", "pepper"),
        ("email", ""),
        ("email", "  "),
        ("email", "${file:/etc/kafka-connect/secrets/postgres.properties:mask.salt}"),
        ("map:email", "pepper"),
    )
    assert hashed == "hashed " + hashlib.sha256(b"pepper" + b"a@b.c").hexdigest()
    assert by_secret_key == hashed
    assert missing.startswith("refused HashFields: columns [phone]")
    assert "missing from the record of ks.t" in missing
    assert empty.startswith("refused") and "salt is empty" in empty
    assert blank.startswith("refused") and "salt is empty" in blank
    assert unresolved.startswith("refused") and "unresolved ${...} reference" in unresolved
    assert "postgres.properties" not in unresolved
    # A schemaless value would have passed with the email in clear: refused instead.
    assert schemaless.startswith("refused HashFields: the record of ks.t has no schema")
    assert "a@b.c" not in schemaless
