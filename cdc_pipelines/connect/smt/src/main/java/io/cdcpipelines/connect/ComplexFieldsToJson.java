package io.cdcpipelines.connect;

import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.connector.ConnectRecord;
import org.apache.kafka.connect.data.Field;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.SchemaBuilder;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.json.JsonConverter;
import org.apache.kafka.connect.json.JsonConverterConfig;
import org.apache.kafka.connect.transforms.Transformation;

/**
 * Rewrites collection, tuple and UDT columns of a CDC envelope as JSON text.
 *
 * <p>The JDBC sink writes primitives and arrays of primitives, but not structs or arrays of
 * structs (how the Scylla CDC source emits maps, tuples and UDTs), nor arrays of bytes or of
 * timestamps. Inside the envelope's {@code before} and {@code after} rows, every such column
 * becomes an optional STRING holding the column's JSON (Connect's own JsonConverter, schemas
 * off), which PostgreSQL accepts into a jsonb column. Apply it before unwrapping the envelope.
 * Records that are not envelopes (tombstones, flat rows) pass through unchanged.
 */
public class ComplexFieldsToJson<R extends ConnectRecord<R>> implements Transformation<R> {
  private static final String[] ROW_FIELDS = {"before", "after"};
  private final Map<Schema, Schema> envelopeSchemas = new ConcurrentHashMap<>();
  private final Map<Schema, Schema> rowSchemas = new ConcurrentHashMap<>();
  private JsonConverter json;

  @Override
  public void configure(Map<String, ?> configs) {
    json = new JsonConverter();
    json.configure(Map.of(JsonConverterConfig.SCHEMAS_ENABLE_CONFIG, "false", "converter.type", "value"));
  }

  @Override
  public R apply(R record) {
    Schema schema = record.valueSchema();
    if (!(record.value() instanceof Struct envelope) || schema == null || schema.type() != Schema.Type.STRUCT) {
      return record;
    }
    if (!needsRewrite(schema)) {
      return record;
    }
    Schema newSchema = envelopeSchemas.computeIfAbsent(schema, this::envelopeSchema);
    Struct rewritten = new Struct(newSchema);
    for (Field field : schema.fields()) {
      Object value = envelope.get(field);
      if (isRowField(field) && value instanceof Struct row) {
        rewritten.put(field.name(), rewriteRow(row));
      } else {
        rewritten.put(field.name(), value);
      }
    }
    return record.newRecord(
        record.topic(), record.kafkaPartition(), record.keySchema(), record.key(),
        newSchema, rewritten, record.timestamp(), record.headers());
  }

  private static boolean isRowField(Field field) {
    for (String name : ROW_FIELDS) {
      if (name.equals(field.name()) && field.schema().type() == Schema.Type.STRUCT) {
        return true;
      }
    }
    return false;
  }

  private static boolean isComplex(Schema schema) {
    return switch (schema.type()) {
      case STRUCT, MAP -> true;
      // Arrays of structs, of nested collections, of bytes or of logical types (timestamps,
      // dates) have no JDBC array binding in the sink; arrays of plain primitives do.
      case ARRAY -> {
        Schema element = schema.valueSchema();
        yield !element.type().isPrimitive()
            || element.type() == Schema.Type.BYTES
            || element.name() != null;
      }
      default -> false;
    };
  }

  private static boolean needsRewrite(Schema envelope) {
    for (Field field : envelope.fields()) {
      if (isRowField(field)) {
        for (Field column : field.schema().fields()) {
          if (isComplex(column.schema())) {
            return true;
          }
        }
      }
    }
    return false;
  }

  private Schema envelopeSchema(Schema envelope) {
    SchemaBuilder builder = Schemas.structLike(envelope);
    for (Field field : envelope.fields()) {
      builder.field(field.name(), isRowField(field) ? rowSchemas.computeIfAbsent(field.schema(), this::rowSchema) : field.schema());
    }
    return builder.build();
  }

  private Schema rowSchema(Schema row) {
    SchemaBuilder builder = Schemas.structLike(row);
    for (Field column : row.fields()) {
      builder.field(column.name(), isComplex(column.schema()) ? Schema.OPTIONAL_STRING_SCHEMA : column.schema());
    }
    return builder.build();
  }

  private Struct rewriteRow(Struct row) {
    Schema newSchema = rowSchemas.computeIfAbsent(row.schema(), this::rowSchema);
    Struct rewritten = new Struct(newSchema);
    for (Field column : row.schema().fields()) {
      Object value = row.get(column);
      if (isComplex(column.schema()) && value != null) {
        byte[] text = json.fromConnectData("", column.schema(), value);
        rewritten.put(column.name(), new String(text, StandardCharsets.UTF_8));
      } else {
        rewritten.put(column.name(), value);
      }
    }
    return rewritten;
  }

  @Override
  public ConfigDef config() {
    return new ConfigDef();
  }

  @Override
  public void close() {
    if (json != null) {
      json.close();
    }
  }
}
