from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from fsstream.contract.partitioning import partition_for

# The keys of Apache Kafka's UtilsTest.testMurmur2 and the partitions the Java client's default
# partitioner gives them: toPositive(murmur2(key)) % partitions, from the test's signed hashes
# (21: -973932308, foobar: -790332482, a-little-bit-long-string: -985981536,
# a-little-bit-longer-string: -1486304829, lkjh...: -58897971, abc: 479470107).
JAVA_CLIENT_PARTITIONS = {
    "21": {3: 0, 12: 0, 64: 44},
    "foobar": {3: 0, 12: 6, 64: 62},
    "a-little-bit-long-string": {3: 2, 12: 8, 64: 32},
    "a-little-bit-longer-string": {3: 2, 12: 11, 64: 3},
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": {3: 2, 12: 5, 64: 13},
    "abc": {3: 0, 12: 3, 64: 27},
}


def test_matches_the_java_client_partitions() -> None:
    for key, by_count in JAVA_CLIENT_PARTITIONS.items():
        for partitions, expected in by_count.items():
            assert partition_for(key, partitions) == expected, (key, partitions)


@given(st.text(max_size=60), st.integers(1, 64))
def test_agrees_with_the_kafka_client_default_partitioner(key: str, partitions: int) -> None:
    all_partitions = list(range(partitions))
    expected = DefaultPartitioner()(key.encode(), all_partitions, all_partitions)
    assert partition_for(key, partitions) == expected
    assert 0 <= partition_for(key, partitions) < partitions
