"""benchmarks/triton_round_trips.py against the real tritonserver: every exchange timed."""

from __future__ import annotations

from pathlib import Path

from benchmarks.triton_round_trips import measure


def test_every_exchange_is_timed_in_every_round(tmp_path: Path) -> None:
    results = measure(calls=5, rounds=2, work_dir=tmp_path)
    assert len(results) == 2
    for timings in results:
        assert set(timings) == {"gauge set", "counter increment", "is_cancelled",
                                "send, 1 tensor", "send, 5 tensors"}  # fmt: skip
        assert all(0 < microseconds < 1e6 for microseconds in timings.values())
