"""bench/pipeline.py's timeline of a run around its blocks: what it reports as the network's idle head, gaps and tail."""

from __future__ import annotations

import datetime as dt

from bench.pipeline import network_timeline

START = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def report(after_s: float, seconds: float) -> dict:
    return {"started": (START + dt.timedelta(seconds=after_s)).isoformat(timespec="milliseconds"), "seconds": seconds}


def test_overlapping_blocks_count_once_and_a_gap_between_them_is_idle():
    # two blocks at a time from 2 s, then a pause, then one more: 2-5 and 3-6 overlap, 7-8 follows a 1 s gap
    timeline = network_timeline([report(7.0, 1.0), report(2.0, 3.0), report(3.0, 3.0)], START, 10.0)
    assert timeline == {"first_block_started_s": 2.0, "last_block_ended_s": 8.0, "idle_between_blocks_s": 1.0,
                        "after_last_block_s": 2.0, "blocks_busy_share": 0.5}


def test_a_block_inside_another_leaves_no_gap():
    timeline = network_timeline([report(1.0, 5.0), report(2.0, 1.0), report(6.5, 0.5)], START, 7.5)
    assert (timeline["idle_between_blocks_s"], timeline["last_block_ended_s"]) == (0.5, 7.0)


def test_a_run_that_computed_no_block_has_no_timeline():
    assert network_timeline([], START, 3.0) is None
