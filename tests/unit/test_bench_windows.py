"""The sustained ingest benchmark's window arithmetic (``benchmarks.usage_ingest.full_windows_fraction``)."""

from __future__ import annotations

from benchmarks.usage_ingest import full_windows_fraction


def test_every_window_full_scores_one() -> None:
    # 10 requests at the start of each 3-s window, 4 windows' worth: 3 full windows counted.
    submits = [w * 3.0 + i * 0.01 for w in range(4) for i in range(10)]
    assert full_windows_fraction(submits, limit=10, window_s=3.0) == (3, 1.0)


def test_a_client_slower_than_the_window_scores_its_share() -> None:
    # One request per 0.6 s: 5 in each 3-s window that allows 10, so half of every full window.
    submits = [i * 0.6 for i in range(20)]  # 0 .. 11.4 s
    windows, fraction = full_windows_fraction(submits, limit=10, window_s=3.0)
    assert windows == 3
    assert fraction == 15 / 30


def test_less_than_one_window_is_not_a_measurement() -> None:
    assert full_windows_fraction([0.0, 1.0, 2.0], limit=10, window_s=3.0) == (0, 0.0)
    assert full_windows_fraction([], limit=10, window_s=3.0) == (0, 0.0)
