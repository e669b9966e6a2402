"""The reorder worker: consumes raw batches, orders each view through the pure core, and
publishes rows, tombstones, view-state changelog records and raw offsets in one Kafka
transaction per batch and partition.

``worker`` is the consume loop, timers and transactions, ``agent`` decode → core → rows,
``state`` the RocksDB view store backed by its changelog, ``content`` the cache of raw
event content that re-published rows are rebuilt from.
"""
