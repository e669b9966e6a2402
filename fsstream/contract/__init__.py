"""The wire contract every worker and consumer shares: the Avro codec and its schemas, the
record headers, the topics, and the dead-letter record format."""
