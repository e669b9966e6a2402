"""Pure logic of fsstream: no Kafka, no S3, no parquet; clocks and lookups are passed in."""
