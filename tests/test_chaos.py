"""A seeded subset of the fault suite (``make chaos`` runs 50): each run is clean.

Real server processes under bounded load, one fault each: a second signal,
a SIGTERM storm, SIGKILL of one of two worker processes, and, on the durable
side, redis-server SIGKILLed and restarted (``appendonly yes``) under two
streaQ worker processes. The checker (bench/chaos.py) asserts the rules; the
only timing in them is the exit bound the design states (the deadline + 1 s).
"""

from __future__ import annotations

import shutil
import sys

import pytest

from bench.chaos import Plan, run_suite

SEEDS = [1, 2, 4]  # second_signal, sigterm_storm, kill_worker
DURABLE_SEEDS = [7]  # kill_redis


async def test_seeded_faults_keep_every_acknowledged_task_accounted_for() -> None:
    assert [Plan.of(seed).fault for seed in SEEDS] == [
        "second_signal", "sigterm_storm", "kill_worker",
    ]  # fmt: skip
    outcomes = await run_suite(SEEDS)
    for outcome in outcomes:
        assert outcome.problems == [], (outcome.plan, outcome.output[-3000:])
        assert outcome.counts["requests"] > 0
    killed = outcomes[2]
    assert killed.victim is not None
    assert killed.report is not None
    assert [entry["pid"] for entry in killed.report["lost"]] == [killed.victim]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="streaQ (the durable backend) needs 3.11+")
@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="no redis-server: run the tests with 'make pytest' (it installs it), "
    "or apt-get install redis-server",
)
async def test_a_redis_killed_under_load_loses_no_acknowledged_durable_task() -> None:
    assert [Plan.of(seed).fault for seed in DURABLE_SEEDS] == ["kill_redis"]
    [outcome] = await run_suite(DURABLE_SEEDS)
    assert outcome.problems == [], (outcome.plan, outcome.output[-3000:])
    counts = outcome.counts
    # Both answers happened: stored before Redis died or after it came back
    # (2xx), refused while it was down (503).
    assert counts["2xx"] > 0
    assert counts["503"] > 0
    assert counts["durable run"] == counts["2xx"]
    assert counts["503 that ran"] == 0
    # Both workers rode out the outage and drained on SIGTERM.
    assert [worker.process.returncode for worker in outcome.workers] == [0, 0]
    assert all("Redis is back" in worker.output for worker in outcome.workers)
