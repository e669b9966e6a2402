"""``fsstream bench`` at a tiny size: it runs both input shapes end to end and reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_measures_both_shapes_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / "bench"
    command = [
        *(sys.executable, "-m", "fsstream", "bench", "--events", "600", "--rate", "200"),
        *("--live-seconds", "3", "--workdir", str(workdir)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((workdir / "bench.json").read_text())
    results = {r["mode"]: r for r in figures["modes"]}
    assert set(results) == {"batched", "single"}
    assert results["batched"]["records"] < results["single"]["records"]
    for mode, r in results.items():
        assert r["events"] == 600, mode
        assert r["events_per_s"] > 0 and r["cpu_s_per_million"] > 0, mode
        assert {p["name"] for p in r["processes"]} == {"reorder", "sink"}, mode
        assert all(p["peak_rss_mib"] > 0 for p in r["processes"]), mode
        assert 0 < r["p50_latency_s"] <= r["p99_latency_s"], mode
        assert 5 < r["parquet_bytes_per_event"] < 1_000, mode
        assert r["floor_events_per_s"] > 0, mode
        assert r["core_check_us_per_event"] > 0 and r["core_reorder_events_per_s"] > 0, mode
        assert r["core_enrich_us_per_event"] > 0, mode
        # Every raw record went through a committed transaction, a few records each.
        assert 0 < r["transactions"] <= r["records"], mode
        assert r["transaction_mean_ms"] > 0, mode
        assert f"== {mode}: 600 events" in done.stdout
    cost = figures["transaction"]
    assert cost["rows_per_batch"] > 0
    for figure in ("plain_cpu_us", "plain_ms", "transaction_cpu_us", "transaction_ms"):
        assert cost[figure] > 0, figure
    assert "in one transaction:" in done.stdout
    matching = figures["matching_us"]
    for series in ("by_path_elements", "by_definitions"):
        points = matching[series]
        assert len(points) >= 3 and all(us > 0 for _, us in points), series
        assert [n for n, _ in points] == sorted(n for n, _ in points), series
