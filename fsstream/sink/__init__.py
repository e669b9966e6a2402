"""The sink worker: reads the events topic in bulk, buffers rows per partition and hour,
writes hourly parquet files to the warehouse, recreates files for tombstones, seals hours
with a manifest, and exports the definitions.

``service`` is the consume loop and its commits, ``agent`` the buffers, files and
tombstones, ``ledger`` the per-hour record of written files, ``parquet_format`` the
pure encoding of event and definition files, ``definitions_export`` the definition
lookup tables.
"""
