"""How `chatplane ops` shows the operations API's answers (Rich; imported by the ops
commands only, so `serve` never loads it)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _yes(value: Any) -> str:
    return "-" if value is None else str(value)


def _state(process: dict[str, Any]) -> Text:
    if process.get("stale"):
        return Text("stale", style="bold red")
    if process.get("draining"):
        return Text("draining", style="yellow")
    return Text("ok", style="green")


def _reach(check: dict[str, Any] | None) -> Text:
    if check is None:
        return Text("not configured", style="dim")
    if check.get("reachable"):
        return Text("reachable", style="green")
    return Text(f"UNREACHABLE: {check.get('error')}", style="bold red")


def print_status(status: dict[str, Any]) -> None:
    console = _console()
    me = status["process"]
    header = Text(f"chatplane {status['version']}  answered by {me['id']} ({me['kind']})")
    if me["draining"]:
        header.append(f"  DRAINING since {me['since']} ({me['reason']})", style="bold yellow")
    console.print(header)

    processes = Table(title="Processes", title_justify="left")
    processes.add_column("id", no_wrap=True)
    processes.add_column("kind")
    processes.add_column("version")
    processes.add_column("seen", justify="right")
    processes.add_column("turns", justify="right")
    processes.add_column("in flight", justify="right")
    processes.add_column("state")
    for process in status["processes"]:
        turns = process.get("running_turns")
        concurrency = process.get("concurrency")
        processes.add_row(
            process["id"],
            process["kind"],
            process["version"],
            f"{process['seen_s_ago']:.1f} s ago",
            "-" if turns is None else f"{turns}/{_yes(concurrency)}",
            _yes(process.get("inflight")),
            _state(process),
        )
    console.print(processes)
    if status.get("presence_error"):
        console.print(Text(f"presence: {status['presence_error']}", style="red"))

    queue, turns = status["queue"], status["turns"]
    work = Table(title="Queue and turns", title_justify="left")
    for name in ("queue depth", "oldest job", "turns running", "turns queued"):
        work.add_column(name, justify="right")
    age = queue.get("oldest_job_age_s")
    work.add_row(
        _yes(queue.get("depth")),
        "-" if age is None else f"{age:.1f} s",
        _yes(turns.get("running")),
        _yes(turns.get("queued")),
    )
    console.print(work)
    for problem in (queue.get("error"), turns.get("error")):
        if problem:
            console.print(Text(problem, style="red"))

    line = Text("database: ").append_text(_reach(status["database"]))
    line.append("   redis: ").append_text(_reach(status.get("redis")))
    console.print(line)
    pool = status.get("db_pool")
    if pool:
        console.print(
            f"db pool of this process: {pool['checked_out']} in use of {pool['size']}"
            f" (+{pool['overflow']} of {pool['max_overflow']} overflow)"
        )


def print_drain_state(process: dict[str, Any]) -> None:
    if process["draining"]:
        text = Text(f"{process['id']} is draining", style="yellow")
        text.append(f" since {process['since']} ({process['reason']})")
        text.append(f"; {process['inflight']} model call(s) in flight")
    else:
        text = Text(f"{process['id']} is in service", style="green")
    _console().print(text)


def print_dead_letters(answer: dict[str, Any]) -> None:
    console = _console()
    letters = answer["dead_letters"]
    if not letters:
        console.print("No dead letters.")
        return
    table = Table(title=f"Dead letters ({len(letters)}, newest first)", title_justify="left")
    for name in ("job", "kind", "turn", "attempts", "reason"):
        table.add_column(name, no_wrap=name != "reason")
    for dead in letters:
        table.add_row(
            dead["job_id"],
            dead["kind"],
            _yes(dead["turn_id"]),
            str(dead["attempts"]),
            Text(dead["reason"], style="red"),
        )
    console.print(table)
