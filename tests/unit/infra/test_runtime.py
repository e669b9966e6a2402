"""Worker logging: transient Kafka start-up answers are not reported as errors."""

from __future__ import annotations

import logging

from fsstream.infra.runtime import TransientKafkaErrors


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


GROUP = "aiokafka.consumer.group_coordinator"
COORDINATOR = "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"


def test_transient_answers_are_dropped_during_the_start_up_grace() -> None:
    calm = TransientKafkaErrors(grace_s=60)
    assert not calm.filter(record(GROUP, logging.ERROR, COORDINATOR))
    leader = "Unexpected error: [Error 6] NotLeaderForPartitionError"
    assert not calm.filter(record("aiokafka.consumer.fetcher", logging.ERROR, leader))


def test_transient_answers_after_the_grace_are_warnings() -> None:
    calm = TransientKafkaErrors(grace_s=0)
    late = record(GROUP, logging.ERROR, COORDINATOR)
    assert calm.filter(late)
    assert (late.levelno, late.levelname) == (logging.WARNING, "WARNING")


def test_other_errors_and_other_loggers_are_untouched() -> None:
    calm = TransientKafkaErrors(grace_s=60)
    denied = "[Error 29] TopicAuthorizationFailedError"
    other = record("aiokafka.consumer.fetcher", logging.ERROR, denied)
    ours = record("fsstream.reorder.worker", logging.ERROR, COORDINATOR)
    for kept in (other, ours):
        assert calm.filter(kept)
        assert kept.levelno == logging.ERROR
