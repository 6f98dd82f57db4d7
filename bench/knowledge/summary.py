"""The targets and the printed summary of a result."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bench.knowledge.common import HYBRID, LEXICAL, NDCG_K, RECALL_K, VECTOR

if TYPE_CHECKING:
    pass


# Results ---------------------------------------------------------------------------------


def knowledge_targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per shape: hybrid's nDCG@10 above both lexical-only and vector-only."""
    checks = []
    metric = f"ndcg@{NDCG_K}"
    for shape, modes in result["knowledge"]["quality"].items():
        hybrid = modes[HYBRID].get(metric)
        singles = [modes[mode].get(metric) for mode in (LEXICAL, VECTOR)]
        best = max((value for value in singles if value is not None), default=None)
        met = None if hybrid is None or None in singles else hybrid > best
        checks.append(
            {
                "name": f"hybrid_ndcg10_above_lexical_and_vector_{shape}",
                "target": best,
                "measured": hybrid,
                "op": ">",
                "met": met,
                "note": "nDCG@10 of hybrid over the better of lexical-only and vector-only",
            }
        )
    return checks


def knowledge_lines(result: Mapping[str, Any]) -> list[str]:
    """The ingestion, latency and quality rows as text."""
    block = result["knowledge"]
    corpus = block["corpus"]
    lines = [
        f"knowledge: {corpus['documents']} docstrings of {corpus['modules']} modules "
        f"(Python {corpus['python']}), embedder {block['embedder']['model'] or '-'}"
        + (f" (skipped: {block['embedder']['skipped']})" if block["embedder"]["skipped"] else "")
    ]
    for shape, reason in block["shapes_skipped"].items():
        lines.append(f"knowledge: {shape} skipped: {reason}")
    lines.append(f"{'ingestion':>40} {'docs':>6} {'chunks':>7} {'chunks/s':>9} {'docs/s':>7}")
    for shape, corpora in block["ingestion"].items():
        for corpus_name, rows in corpora.items():
            for label, row in rows.items():
                name = f"{shape} {corpus_name} {label}"
                if "skipped" in row:
                    lines.append(f"{name:>40} skipped: {row['skipped']}")
                    continue
                lines.append(
                    f"{name:>40} {row['documents']:>6} {row['chunks']:>7} "
                    f"{row['chunks_per_s']:>9} {row['documents_per_s']:>7}"
                )
    lines.append(f"{'search latency ms':>40} {'p50':>8} {'p99':>8} {'first':>8} {'n':>5}")
    for shape, latency in block["latency"].items():
        for size, cell in latency["sizes"].items():
            for mode in (LEXICAL, HYBRID):
                row = cell[mode]
                name = f"{shape} {size} {mode}"
                if "skipped" in row:
                    lines.append(f"{name:>40} skipped: {row['skipped']}")
                    continue
                lines.append(
                    f"{name:>40} {row['ms']['p50']:>8.2f} {row['ms']['p99']:>8.2f} "
                    f"{row['first_ms']:>8.1f} {row['searches']:>5}"
                )
                vector = row.get("vector")
                if vector is not None:
                    kind = "binary+rescore" if vector["binary_codes"] else "exact"
                    lines.append(
                        f"{f'{shape} {size} vector half ({kind})':>40} "
                        f"{vector['search_ms']['p50']:>8.2f} {vector['search_ms']['p99']:>8.2f} "
                        f"exact {vector['exact_ms']['p50']:.2f}/{vector['exact_ms']['p99']:.2f} "
                        f"recall@{vector['pool']} {vector['recall']}"
                    )
    recall, ndcg = f"recall@{RECALL_K}", f"ndcg@{NDCG_K}"
    lines.append(f"{'quality':>40} {recall:>9} {ndcg:>8}")
    for shape, modes in block["quality"].items():
        for mode, row in modes.items():
            name = f"{shape} {mode}"
            if "skipped" in row:
                lines.append(f"{name:>40} skipped: {row['skipped']}")
                continue
            lines.append(f"{name:>40} {row[recall]:>9.3f} {row[ndcg]:>8.3f}")
    return lines
