"""A seeded subset of the fault suite (``make chaos`` runs 50): each run is clean.

Real server processes under bounded load, one fault each: a second signal,
a SIGTERM storm, and SIGKILL of one of two worker processes. The checker
(bench/chaos.py) asserts the rules; the only timing in them is the exit
bound the design states (the deadline + 1 s).
"""

from __future__ import annotations

from bench.chaos import Plan, run_suite

SEEDS = [1, 2, 4]  # second_signal, sigterm_storm, kill_worker


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
