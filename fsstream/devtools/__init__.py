"""Tooling, not runtime: the demo, the benchmarks, generated traffic, the embedded
pipeline, worker process helpers and the local Kafka broker."""
