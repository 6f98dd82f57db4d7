"""`python -m bench.knowledge`: the scenario on its own, written like `bench.run` writes it."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.knowledge.common import KNOWLEDGE, RESULTS_DIR, SHAPES, KnowledgeOptions
from bench.knowledge.scenario import measure_knowledge
from bench.knowledge.summary import knowledge_lines, knowledge_targets

if TYPE_CHECKING:
    pass


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = KnowledgeOptions()
    parser = argparse.ArgumentParser(
        prog="python -m bench.knowledge",
        description="Knowledge bases: ingestion, search latency and retrieval quality on "
        "SQLite and Postgres; writes bench/results/knowledge-<timestamp>.json.",
    )

    def numbers(value: str) -> tuple[int, ...]:
        return tuple(int(part) for part in value.split(",") if part)

    parser.add_argument("--sizes", type=numbers, default=defaults.sizes, help="chunks, a,b,c")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--max-cell-s", type=float, default=defaults.max_cell_s)
    parser.add_argument("--sample-documents", type=int, default=defaults.sample_documents)
    parser.add_argument("--shapes", type=lambda v: tuple(v.split(",")), default=defaults.shapes)
    parser.add_argument("--embedder", default=defaults.embedder, help="local:<model> or none")
    parser.add_argument("--no-module-pages", action="store_true")
    parser.add_argument("--pages-embedded", action="store_true", help="embed the module pages too")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.sizes or min(args.sizes) < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--sizes >= 1, --rounds >= 1 and --warmup >= 0 are required")
    if any(shape not in SHAPES for shape in args.shapes):
        parser.error(f"--shapes: a list of {', '.join(SHAPES)}")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The scenario on its own, written like `bench.run` writes it."""
    from bench.report import machine_info, source_revision, write_json

    options = KnowledgeOptions(
        sizes=args.sizes,
        rounds=args.rounds,
        warmup=args.warmup,
        top_k=args.top_k,
        max_cell_s=args.max_cell_s,
        sample_documents=args.sample_documents,
        shapes=args.shapes,
        embedder=args.embedder,
        module_pages=not args.no_module_pages,
        pages_embedded=args.pages_embedded,
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="chatplane-bench-kb-") as scratch:
        workdir = args.workdir.resolve() / f"run-{stamp}" if args.workdir else Path(scratch)
        outcome = await measure_knowledge(workdir, options)
    document: dict[str, Any] = {
        "scenario": KNOWLEDGE,
        "timestamp": stamp,
        "started_at": round(started, 3),
        "machine": machine_info(),
        "revision": source_revision(),
        "options": options.as_json(),
        **outcome,
    }
    document["targets"] = knowledge_targets(document)
    path = write_json(args.results_dir or RESULTS_DIR, KNOWLEDGE, stamp, document)
    for line in knowledge_lines(document):
        print(line)
    print(f"results: {path}")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    document = asyncio.run(run(parse_args(argv)))
    return 1 if document["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
