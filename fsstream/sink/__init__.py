"""The warehouse sink's building blocks: parquet encoding of event and definition files."""
