"""`knowledge`: what a knowledge base costs and how well it finds things, on both shapes.

A package: `common` (options), `corpus` (texts, judgements, metrics), `stores` (the
databases and the bulk filler), `ingestion`, `quality`, `latency`, `scenario` (all three on
each shape), `summary` (targets and printed lines); `python -m bench.knowledge` runs it alone.

Everything runs in this process against `chatplane.knowledge.index.KnowledgeIndex`, on a
SQLite file and on a fresh Postgres database of its own (`chatplane_bench_kb_<random>` on
127.0.0.1:5432 as `postgres`, dropped at the end; the Postgres half is skipped, and says why,
when it does not answer). No HTTP server: the numbers are the index's, not the API's.

The corpus is REAL text the repository does not write: the docstrings of the Python standard
library, read from the running interpreter (a fixed list of modules in
`bench/data/knowledge/queries.json`; one document per module, class, function, method or
property docstring, id `json.dumps`, `pathlib.PurePath.suffix`, ...). The queries and their
graded relevance judgements are committed beside it.

1. **Ingestion** (`ingestion.<shape>.<corpus>.<embedder>`): documents one after the other, as
   the ingest job does: extraction and chunking (in a thread), `KnowledgeIndex.embed`,
   `write_document` and the commit that marks the document ready. Chunks per second over the
   whole loop, and the time of each stage. Corpora: `docstrings` (one small document per
   docstring) and `module-pages` (one Markdown page per module, a `##` section per
   docstring). Embedders: `lexical` (none) and the local one (`local:...`; skipped, with the
   reason, when the `local-embeddings` extra is not installed).
2. **Latency** (`latency.<shape>.<size>.<mode>`): `KnowledgeIndex.search` p50/p99 at 1k, 10k
   and 100k chunks, `lexical` and `hybrid`. A sample of documents goes through the real
   `write_document`; the rest is bulk-inserted rows (the corpus' chunk texts again, under
   other documents). Their vectors are random unit vectors of the model's dimension: a
   brute-force or approximate vector search costs the same whatever the values, and
   embedding 100k chunks on 2 cores would take over an hour. The queries are the judged
   ones, in rounds.
3. **Quality** (`quality.<shape>.<mode>`): recall@5 and nDCG@10 of `lexical`, `vector` and
   `hybrid` over the `docstrings` knowledge base with real embeddings. `vector` is the exact
   cosine ranking of the stored vectors, computed here (the index has no vector-only mode);
   `lexical` is the index without an embedder, `hybrid` with it.
"""

from bench.knowledge.common import (
    HYBRID,
    KNOWLEDGE,
    LEXICAL,
    NDCG_K,
    RECALL_K,
    VECTOR,
    KnowledgeOptions,
)
from bench.knowledge.corpus import (
    load_judgements,
    module_pages,
    ndcg_at_k,
    read_queries_file,
    recall_at_k,
    stdlib_corpus,
)
from bench.knowledge.scenario import measure_knowledge
from bench.knowledge.stores import postgres_missing
from bench.knowledge.summary import knowledge_lines, knowledge_targets

__all__ = [
    "HYBRID",
    "KNOWLEDGE",
    "LEXICAL",
    "NDCG_K",
    "RECALL_K",
    "VECTOR",
    "KnowledgeOptions",
    "knowledge_lines",
    "knowledge_targets",
    "load_judgements",
    "measure_knowledge",
    "module_pages",
    "ndcg_at_k",
    "postgres_missing",
    "read_queries_file",
    "recall_at_k",
    "stdlib_corpus",
]
