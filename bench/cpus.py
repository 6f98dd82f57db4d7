"""Which CPUs the load generator and the processes under test run on (`--cpus`).

On a small machine the load generator and the server share every core: the scheduler puts
them on the same one now and then, and a first token that is due waits for the other
process's time slice. On this 2-vCPU VM that roughly doubled the first token's p99 of both
chatplane and the bare floor, and raised the server's CPU per request by a fifth (cache
and migration costs). `auto` keeps them apart, as load-testing tools are run: the load
generator on the first CPU this process may use, every process the bench starts on the
others. `off` lets the scheduler place everything, as before.

A child is pinned before it runs anything: it starts as `python bench/cpus.py CPUS --
ARGV...` (this file, run as a script: it imports nothing of the bench), which sets its own
affinity and `exec`s the real command (same PID, so its CPU time and memory are read as
before). The fake upstream stands for the model vendor, outside the system under test, and
runs beside the load generator, as py-spy (`--profile`) does; Postgres, Redis and the CLI
commands the bench runs for setup are not pinned.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
OFF = "off"
MODES = (AUTO, OFF)


@dataclass(frozen=True, slots=True)
class CpuPlan:
    load_generator: tuple[int, ...]
    servers: tuple[int, ...]

    def as_json(self) -> dict[str, Any]:
        return {"load_generator": list(self.load_generator), "servers": list(self.servers)}


_applied: CpuPlan | None = None  # while `pinned` applies a plan


def applied() -> CpuPlan | None:
    """The plan `pinned` applies now, if any."""
    return _applied


def plan(mode: str) -> CpuPlan | None:
    """The plan for `mode`; None when it is `off` or fewer than two CPUs are usable."""
    if mode not in MODES:
        raise ValueError(f"--cpus is one of {', '.join(MODES)}, not {mode!r}")
    usable = sorted(os.sched_getaffinity(0))
    if mode == OFF or len(usable) < 2:
        return None
    return CpuPlan(load_generator=(usable[0],), servers=tuple(usable[1:]))


@contextlib.contextmanager
def pinned(cpu_plan: CpuPlan | None) -> Iterator[None]:
    """Run the calling thread (and the threads it starts) on the load generator's CPUs and
    every child `ManagedProcess` starts on the servers' CPUs; both undone on the way out.
    Call it from the main thread before the event loop starts."""
    global _applied
    if cpu_plan is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpu_plan.load_generator)
    _applied = cpu_plan
    try:
        yield
    finally:
        _applied = None
        os.sched_setaffinity(0, before)


def cpu_list(cpus: Sequence[int]) -> str:
    """CPUs as `taskset` and this file's command line write them: `1,2`."""
    return ",".join(str(cpu) for cpu in cpus)


def child_argv(argv: Sequence[str]) -> list[str]:
    """`argv`, started on the servers' CPUs when a plan is applied."""
    if _applied is None:
        return list(argv)
    return [sys.executable, __file__, cpu_list(_applied.servers), "--", *argv]


def main(argv: Sequence[str]) -> None:
    """`python bench/cpus.py 1,2 -- COMMAND ARGS...`: pin this process, then become the
    command."""
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python bench/cpus.py CPU[,CPU...] -- COMMAND [ARGS...]")
    os.sched_setaffinity(0, {int(cpu) for cpu in argv[0].split(",")})
    os.execvp(argv[2], list(argv[2:]))


if __name__ == "__main__":
    main(sys.argv[1:])
