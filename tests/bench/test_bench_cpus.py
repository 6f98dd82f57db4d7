"""`--cpus`: the load generator on one CPU, every process under test on the others."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from bench.procs import ManagedProcess, child_env

from bench import cpus

USABLE = sorted(os.sched_getaffinity(0))
PRINT_AFFINITY = "import os; print(sorted(os.sched_getaffinity(0)))"

needs_two = pytest.mark.skipif(len(USABLE) < 2, reason="pinning needs two usable CPUs")


@needs_two
def test_auto_splits_the_usable_cpus_and_off_does_not_pin() -> None:
    plan = cpus.plan("auto")

    assert plan is not None
    assert plan.load_generator == (USABLE[0],)
    assert plan.servers == tuple(USABLE[1:])
    assert plan.as_json() == {"load_generator": [USABLE[0]], "servers": USABLE[1:]}
    assert cpus.plan("off") is None
    with pytest.raises(ValueError, match="auto, off"):
        cpus.plan("half")


async def _affinity_of_child(tmp_path: Path, *, under_test: bool = True) -> str:
    child = ManagedProcess(
        "affinity",
        [sys.executable, "-c", PRINT_AFFINITY],
        env=child_env({}),
        cwd=tmp_path,
        under_test=under_test,
    )
    await child.start()
    assert await child.wait(timeout_s=30) == 0
    return child.log_path.read_text().strip()


@needs_two
async def test_children_start_on_the_servers_cpus_and_pinning_is_undone(tmp_path: Path) -> None:
    plan = cpus.plan("auto")
    assert plan is not None
    unpinned = await _affinity_of_child(tmp_path)

    with cpus.pinned(plan):
        assert cpus.applied() == plan
        assert sorted(os.sched_getaffinity(0)) == list(plan.load_generator)
        pinned_child = await _affinity_of_child(tmp_path)
        beside = await _affinity_of_child(tmp_path, under_test=False)

    assert pinned_child == str(list(plan.servers))
    assert beside == str(list(plan.load_generator))  # the upstream, py-spy
    assert unpinned == str(USABLE)
    assert cpus.applied() is None
    assert sorted(os.sched_getaffinity(0)) == USABLE


def test_the_trampoline_needs_cpus_and_a_command() -> None:
    with pytest.raises(SystemExit, match="usage"):
        cpus.main(["1"])
