import pytest

from fsstream.core import timefmt


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2024-01-01T00:00:00.123Z", 1704067200123000),
        ("2024-01-01T00:00:00.123456Z", 1704067200123456),
        ("2024-01-01T01:00:00.5+01:00", 1704067200500000),
        ("2006-01-02T15:04:05.000000Z", 1136214245000000),
    ],
)
def test_parse(text: str, us: int) -> None:
    assert timefmt.parse_rfc3339_us(text) == us


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2024-01-01", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z"]
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        timefmt.parse_rfc3339_us(text)


def test_formats() -> None:
    us = 1704067200123456
    assert timefmt.format_event_time(us) == "2024-01-01T00:00:00.123456Z"
    assert timefmt.format_definition_time(us // 1000) == "2024-01-01 00:00:00.123000"
    assert timefmt.format_partition_hour(us // 1000 + 3_599_000) == "2024-01-01 00:00:00"
    assert timefmt.format_partition_hour(us // 1000 + 3_600_000) == "2024-01-01 01:00:00"
    assert timefmt.format_partition_second(us // 1000) == "2024-01-01 00:00:00"


@pytest.mark.parametrize(
    "us", [0, 1, 999_999, 1_000_000, 1704067200123456, 253402300799999999, 951782400000001]
)
def test_event_time_format_matches_datetime(us: int) -> None:
    from datetime import UTC, datetime, timedelta

    expected = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    assert timefmt.format_event_time(us) == expected
    assert timefmt.is_canonical_event_time(expected)
    assert timefmt.parse_rfc3339_us(expected) == us
    assert not timefmt.is_canonical_event_time(expected[:-1] + "+00:00")


def test_partition_hours_read_back_as_the_hours_they_were_written_for() -> None:
    first = 1704067200000 - 40 * 24 * timefmt.MS_PER_HOUR
    for hour in range(first, first + 3 * 366 * 24 * timefmt.MS_PER_HOUR, 7 * timefmt.MS_PER_HOUR):
        text = timefmt.format_partition_hour(hour + 1_234_567)
        assert timefmt.parse_partition_hour(text) == hour
        assert timefmt.format_partition_hour(timefmt.parse_partition_hour(text)) == text
    assert timefmt.parse_partition_hour("1970-01-01 00:00:00") == 0
    assert timefmt.parse_partition_hour("2024-02-29 23:00:00") == 1709247600000


@pytest.mark.parametrize(
    "text", ["", "2024-01-01", "2024-01-01 05:30:00", "2024-01-01 05:00:01", "2024-01-01T05:00:00"]
)
def test_a_partition_hour_is_a_whole_hour_or_refused(text: str) -> None:
    with pytest.raises(ValueError):
        timefmt.parse_partition_hour(text)
