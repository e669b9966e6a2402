"""Data Export bundles for legacy consumers, built from the warehouse, and their v1 API.

``mapping`` turns one warehouse row into a flat Data Export event; ``bundles`` cuts the
warehouse into per-period gzip JSON bundles under ``fullstory_<org>/exports/`` and
builds the due ones; ``api`` serves them as ``/api/v1/export/list`` and
``/api/v1/export/get``; ``cli`` is the ``fsstream export`` command group. The package
itself imports nothing, so the console script starts without pyarrow or aiohttp.
"""
