package io.cdcpipelines.connect;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.common.config.ConfigException;
import org.apache.kafka.connect.connector.ConnectRecord;
import org.apache.kafka.connect.data.Field;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.SchemaBuilder;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.transforms.Transformation;

/**
 * Copies the CDC event's source write time into the envelope's row images as a column.
 *
 * <p>The target table's version column carries the source write time in microseconds so a
 * repair can refuse to overwrite a newer row. The Scylla CDC source puts that time in
 * {@code source.ts_us}; this transform adds it to {@code before} and {@code after} as the
 * INT64 field named by {@code version.field}, which the JDBC sink then writes like any column.
 */
public class SourceTimestampToRow<R extends ConnectRecord<R>> implements Transformation<R> {
  public static final String VERSION_FIELD = "version.field";
  public static final String SOURCE_FIELD = "source.field";
  private static final ConfigDef CONFIG =
      new ConfigDef()
          .define(VERSION_FIELD, ConfigDef.Type.STRING, ConfigDef.NO_DEFAULT_VALUE,
              ConfigDef.Importance.HIGH, "Row column that receives the source write time.")
          .define(SOURCE_FIELD, ConfigDef.Type.STRING, "ts_us",
              ConfigDef.Importance.LOW, "Field of the envelope's source struct to copy.");

  private final Map<Schema, Schema> envelopeSchemas = new ConcurrentHashMap<>();
  private final Map<Schema, Schema> rowSchemas = new ConcurrentHashMap<>();
  private String versionField;
  private String sourceField;

  @Override
  public void configure(Map<String, ?> configs) {
    Map<String, Object> parsed = CONFIG.parse(configs);
    versionField = ((String) parsed.get(VERSION_FIELD)).trim();
    sourceField = ((String) parsed.get(SOURCE_FIELD)).trim();
    if (versionField.isEmpty()) {
      throw new ConfigException(VERSION_FIELD, versionField, "must name the version column");
    }
  }

  @Override
  public R apply(R record) {
    Schema schema = record.valueSchema();
    if (!(record.value() instanceof Struct envelope) || schema == null
        || schema.field("source") == null || schema.field("source").schema().type() != Schema.Type.STRUCT
        || schema.field("source").schema().field(sourceField) == null) {
      return record;
    }
    Struct source = envelope.getStruct("source");
    Object writeTime = source == null ? null : source.get(sourceField);
    Schema newSchema = envelopeSchemas.computeIfAbsent(schema, this::envelopeSchema);
    Struct rewritten = new Struct(newSchema);
    for (Field field : schema.fields()) {
      Object value = envelope.get(field);
      if (isRowField(field) && value instanceof Struct row) {
        rewritten.put(field.name(), withVersion(row, writeTime));
      } else {
        rewritten.put(field.name(), value);
      }
    }
    return record.newRecord(
        record.topic(), record.kafkaPartition(), record.keySchema(), record.key(),
        newSchema, rewritten, record.timestamp(), record.headers());
  }

  private static boolean isRowField(Field field) {
    return ("before".equals(field.name()) || "after".equals(field.name()))
        && field.schema().type() == Schema.Type.STRUCT;
  }

  private Schema envelopeSchema(Schema envelope) {
    SchemaBuilder builder = Schemas.structLike(envelope);
    for (Field field : envelope.fields()) {
      builder.field(field.name(),
          isRowField(field) ? rowSchemas.computeIfAbsent(field.schema(), this::rowSchema) : field.schema());
    }
    return builder.build();
  }

  private Schema rowSchema(Schema row) {
    SchemaBuilder builder = Schemas.structLike(row);
    for (Field column : row.fields()) {
      if (!column.name().equals(versionField)) {
        builder.field(column.name(), column.schema());
      }
    }
    builder.field(versionField, Schema.OPTIONAL_INT64_SCHEMA);
    return builder.build();
  }

  private Struct withVersion(Struct row, Object writeTime) {
    Struct rewritten = new Struct(rowSchemas.computeIfAbsent(row.schema(), this::rowSchema));
    for (Field column : row.schema().fields()) {
      if (!column.name().equals(versionField)) {
        rewritten.put(column.name(), row.get(column));
      }
    }
    rewritten.put(versionField, writeTime == null ? null : ((Number) writeTime).longValue());
    return rewritten;
  }

  @Override
  public ConfigDef config() {
    return CONFIG;
  }

  @Override
  public void close() {}
}
