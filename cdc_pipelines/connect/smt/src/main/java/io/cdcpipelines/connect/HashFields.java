package io.cdcpipelines.connect;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.common.config.ConfigException;
import org.apache.kafka.connect.connector.ConnectRecord;
import org.apache.kafka.connect.data.Field;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.errors.DataException;
import org.apache.kafka.connect.transforms.Transformation;

/**
 * Replaces string columns of a flat row with the hex SHA-256 of {@code salt + value}.
 *
 * <p>Masks PII before it reaches PostgreSQL while keeping equal values equal (joins and
 * distinct counts still work). Apply after the envelope is unwrapped; null values stay null and
 * tombstones pass through. A configured column missing from a row fails the record (a name
 * Kafka trimmed or a renamed column must never let a value through unhashed), and so does an
 * empty salt or one still holding a {@code ${...}} reference no config provider resolved.
 */
public class HashFields<R extends ConnectRecord<R>> implements Transformation<R> {
  public static final String FIELDS = "fields";
  /**
   * The salt. Named {@code salt.secret} because the Debezium JDBC sink's task logs its whole
   * configuration at start-up and masks only keys ending in {@code secret} or {@code password}
   * (its {@code Configuration.PASSWORD_PATTERN}): under {@code salt} the resolved value was
   * written to the worker log.
   */
  public static final String SALT_SECRET = "salt.secret";
  /** The former name, still read when {@code salt.secret} is not set. */
  public static final String SALT = "salt";
  private static final ConfigDef CONFIG =
      new ConfigDef()
          .define(FIELDS, ConfigDef.Type.LIST, ConfigDef.NO_DEFAULT_VALUE,
              ConfigDef.Importance.HIGH, "String columns to hash.")
          .define(SALT_SECRET, ConfigDef.Type.PASSWORD, "",
              ConfigDef.Importance.MEDIUM, "Prepended to each value before hashing.")
          .define(SALT, ConfigDef.Type.PASSWORD, "",
              ConfigDef.Importance.LOW, "The salt's former name (" + SALT_SECRET + " wins).");

  private List<String> fields;
  private byte[] salt;

  @Override
  public void configure(Map<String, ?> configs) {
    Map<String, Object> parsed = CONFIG.parse(configs);
    @SuppressWarnings("unchecked")
    List<String> names = (List<String>) parsed.get(FIELDS);
    if (names.isEmpty()) {
      throw new ConfigException(FIELDS, names, "name at least one column to hash");
    }
    fields = names;
    String saltText = passwordText(parsed.get(SALT_SECRET));
    if (saltText.isEmpty()) {
      saltText = passwordText(parsed.get(SALT));
    }
    if (saltText.isBlank()) {
      throw new ConfigException(SALT_SECRET, "(hidden)",
          "the salt is empty, so the hashes could be reversed by hashing guesses; set it");
    }
    if (saltText.contains("${")) {
      throw new ConfigException(SALT_SECRET, "(hidden)",
          "the salt holds an unresolved ${...} reference; configure the worker's config"
              + " provider so it resolves");
    }
    salt = saltText.getBytes(StandardCharsets.UTF_8);
  }

  private static String passwordText(Object value) {
    return value == null ? "" : ((org.apache.kafka.common.config.types.Password) value).value();
  }

  @Override
  public R apply(R record) {
    if (record.value() == null) {
      return record; // a tombstone: nothing to hash
    }
    if (!(record.value() instanceof Struct row)) {
      // A schemaless value (a Map from a converter without schemas) would pass unhashed.
      throw new DataException(
          "HashFields: the record of " + record.topic() + " has no schema ("
              + record.value().getClass().getSimpleName() + "), so columns " + fields
              + " cannot be hashed; use a converter with schemas (schemas.enable=true)");
    }
    List<String> missing =
        fields.stream().filter(name -> row.schema().field(name) == null).toList();
    if (!missing.isEmpty()) {
      throw new DataException(
          "HashFields: columns " + missing + " are configured to be hashed but missing from the"
              + " record of " + record.topic() + "; fix the connector's fields list");
    }
    Struct hashed = new Struct(row.schema());
    for (Field field : row.schema().fields()) {
      Object value = row.get(field);
      if (value != null && fields.contains(field.name())) {
        if (field.schema().type() != Schema.Type.STRING) {
          throw new DataException("HashFields: column " + field.name() + " is not a string");
        }
        hashed.put(field, digest((String) value));
      } else {
        hashed.put(field, value);
      }
    }
    return record.newRecord(
        record.topic(), record.kafkaPartition(), record.keySchema(), record.key(),
        record.valueSchema(), hashed, record.timestamp(), record.headers());
  }

  private String digest(String value) {
    try {
      MessageDigest sha = MessageDigest.getInstance("SHA-256");
      sha.update(salt);
      return HexFormat.of().formatHex(sha.digest(value.getBytes(StandardCharsets.UTF_8)));
    } catch (NoSuchAlgorithmException e) {
      throw new DataException("SHA-256 is not available in this JVM", e);
    }
  }

  @Override
  public ConfigDef config() {
    return CONFIG;
  }

  @Override
  public void close() {}
}
