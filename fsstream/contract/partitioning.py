"""The ``fs.events`` partition of a view: part of the wire contract, since every record of a view
goes to one partition and any consumer must be able to compute which (Kafka's default
partitioner on the view key)."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among ``partitions``."""
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions
