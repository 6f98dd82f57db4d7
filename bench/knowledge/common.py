"""Constants and options of the knowledge benchmark, and what the machine did meanwhile."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import system_cpu

if TYPE_CHECKING:
    pass


KNOWLEDGE = "knowledge"
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "knowledge"
QUERIES_PATH = DATA_DIR / "queries.json"
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
SHAPES = ("sqlite", "postgres")
DEFAULT_EMBEDDER = "local:all-MiniLM-L6-v2"
LEXICAL = "lexical"
VECTOR = "vector"
HYBRID = "hybrid"
QUALITY_MODES = (LEXICAL, VECTOR, HYBRID)
DOCSTRINGS = "docstrings"
MODULE_PAGES = "module-pages"
MEDIA_TYPE = "text/markdown"
RECALL_K = 5
NDCG_K = 10
# Chunks asked of a search when judging it: enough distinct documents for nDCG@10 after
# several chunks of one document collapse into one.
QUALITY_TOP_K = 30
# Bulk filler: chunks per filler document, and rows per transaction.
FILLER_CHUNKS_PER_DOCUMENT = 10
BULK_ROWS = 2000
VECTOR_SEED = 20261202
# Gaussian noise per dimension added to a real vector for each filler copy of its text.
FILLER_NOISE = 0.02
PG_DATABASE_PREFIX = "chatplane_bench_kb_"
BENCH_TENANT = "bench-knowledge"
BENCH_EMAIL = "bench-knowledge@example.com"
BYTES_PER_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class KnowledgeOptions:
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    rounds: int = 3  # latency: passes over the query set per size and mode
    warmup: int = 5  # latency: unrecorded searches per size and mode (after the first)
    top_k: int = 5  # latency: passages per search (the default CHATPLANE_KB_TOP_K)
    max_cell_s: float = 90.0  # latency: a size and mode stops measuring after this
    sample_documents: int = 200  # latency: documents written with the real write_document
    shapes: tuple[str, ...] = SHAPES
    embedder: str = DEFAULT_EMBEDDER  # "none" for lexical only
    queries: int | None = None  # only the first N judged queries (tiny runs)
    distractors: int | None = None  # with `queries`: unjudged documents kept beside theirs
    module_pages: bool = True  # also ingest the corpus as one Markdown page per module
    pages_embedded: bool = False  # ... with the embedder too (embedding dominates either way)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# The corpus ------------------------------------------------------------------------------


def machine_cpu(before: Any, elapsed_s: float) -> dict[str, float | None]:
    """Cores the whole machine was busy and stolen during a phase. Postgres runs beside the
    bench, so "other" work is not separable here: a busy machine shows as busy_cores well
    above what the phase itself needs."""
    after = system_cpu()
    if elapsed_s <= 0:
        return {"busy_cores": None, "steal_cores": None}
    return {
        "busy_cores": round((after.busy_s - before.busy_s) / elapsed_s, 3),
        "steal_cores": round((after.steal_s - before.steal_s) / elapsed_s, 3),
    }
