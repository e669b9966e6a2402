from hypothesis import given
from hypothesis import strategies as st

from fsstream.core.partitioning import murmur2, partition_for


def signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def test_matches_kafkas_murmur2_vectors() -> None:
    # The values of Apache Kafka's UtilsTest.testMurmur2.
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, expected in cases.items():
        assert signed(murmur2(data)) == expected


@given(st.text(max_size=60), st.integers(1, 64))
def test_agrees_with_the_kafka_client_partitioner(key: str, partitions: int) -> None:
    from aiokafka.partitioner import murmur2 as client_murmur2

    data = key.encode()
    assert murmur2(data) & 0x7FFFFFFF == client_murmur2(data) & 0x7FFFFFFF
    assert 0 <= partition_for(key, partitions) < partitions
