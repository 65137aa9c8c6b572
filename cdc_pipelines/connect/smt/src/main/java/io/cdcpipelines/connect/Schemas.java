package io.cdcpipelines.connect;

import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.SchemaBuilder;

/** Schema helpers shared by the transforms. */
final class Schemas {
  private Schemas() {}

  /** An empty struct builder with the name, version, doc and optionality of {@code schema}. */
  static SchemaBuilder structLike(Schema schema) {
    SchemaBuilder builder =
        SchemaBuilder.struct().name(schema.name()).version(schema.version()).doc(schema.doc());
    if (schema.isOptional()) {
      builder.optional();
    }
    return builder;
  }
}
