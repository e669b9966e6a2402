"""Raw records written by Apache's avro package, and with the previous fingerprint, on the
real broker: the reorder worker publishes their events like any other."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

from fsstream.contract import codec
from fsstream.contract.topics import create_topics
from fsstream.devtools.processes import WorkerProcess
from fsstream.settings import Settings
from tests.scenario import RawRecord, expected_rows, live, make_views, produce, wait_for
from tests.unit.contract.test_avro_interop import apache_encode, apache_schema


async def test_apache_avro_records_and_old_fingerprints_are_published(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(reorder_grace_s=0.5)
    await create_topics(settings)
    now = int(time.time() * 1000)
    apache, legacy, current = make_views(
        random.Random(31), count=3, per_view=3, start_ms=now - 60_000
    )
    schema = apache_schema(codec.schema_document(codec.RAW_EVENT_BATCH))
    [(old_fingerprint, version)] = codec.LEGACY_FINGERPRINTS.items()
    by_apache = apache_encode(schema, {"ingested_time": now, "events": apache.events})
    # The legacy fingerprint names the body of the version before source_event_id.
    previous = apache_schema(codec.previous_documents()[version])
    ours = apache_encode(previous, {"ingested_time": now, "events": legacy.events})
    records = [
        RawRecord(apache.key, now, [], value=by_apache),
        RawRecord(legacy.key, now, [], value=ours[:2] + old_fingerprint + ours[10:]),
        RawRecord(current.key, now, current.events),
    ]
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as worker:
        worker.wait_assigned()
        await produce(settings, records)
        expected = set(expected_rows([apache, legacy, current]))
        out = await wait_for(settings, settings.topic_events, lambda rs: set(live(rs)) == expected)
    assert set(live(out)) == expected
    dlq = await wait_for(settings, settings.topic_dlq, lambda rs: True, timeout=1)
    assert dlq == []
