"""The retrieval index, one suite on both shapes: a migrated SQLite file and Postgres.

The embedders here are small real models of our own (hashed bags of words, with a few
words folded into shared concepts so that vector search finds what lexical search cannot):
test doubles of the outside embedding models, deterministic and fast."""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy import text as sql

from chatplane.auth.models import Tenant, User
from chatplane.db import migrate
from chatplane.db.engine import Database, create_engine
from chatplane.knowledge import index as index_module
from chatplane.knowledge import lexical as lexical_module
from chatplane.knowledge import vectors as vectors_module
from chatplane.knowledge.chunking import ChunkDraft
from chatplane.knowledge.embedders import normalize_rows
from chatplane.knowledge.index import EmbeddedChunks, KnowledgeIndex, SearchResult
from chatplane.knowledge.lexical import query_terms
from chatplane.knowledge.models import Chunk, ChunkVector, Document, KnowledgeBase
from chatplane.knowledge.vectors import KbMatrix, VectorIndex, reciprocal_rank_fusion
from tests.conftest import RUN_ID, make_settings, postgres_database

CONCEPTS = {"car": "vehicle", "automobile": "vehicle", "vehicle": "vehicle"}

if TYPE_CHECKING:
    from chatplane.knowledge.embedders import Vectors


class BagOfWordsEmbedder:
    """Words hashed into `dim` buckets (concept words share one), L2-normalised."""

    def __init__(self, model: str = "test:bow-1", dim: int = 64) -> None:
        self.model = model
        self.dim: int | None = dim
        self.calls = 0
        self.texts = 0
        # When set, the call numbered `block_at` (from 1) waits for `release`.
        self.block_at: int | None = None
        self.blocked = asyncio.Event()
        self.release = asyncio.Event()

    async def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        self.texts += len(texts)
        if self.calls == self.block_at:
            self.blocked.set()
            await self.release.wait()
        assert self.dim is not None
        matrix = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in query_terms(text):
                token = CONCEPTS.get(word, word)
                matrix[row, zlib.crc32(f"{self.model}/{token}".encode()) % self.dim] += 1.0
        return normalize_rows(matrix)

    async def embed_query(self, text: str) -> Vectors:
        vectors = await self.embed([text])
        return vectors[0]

    async def close(self) -> None:
        pass


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    data_dir = tmp_path_factory.mktemp("kb-index")
    settings = make_settings(data_dir)
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{data_dir / 'index.db'}"
        await migrate.upgrade(url)
        database = Database(create_engine(settings, url))
        yield database
        await database.close()
        return
    async with postgres_database(f"chatplane_kb_index_{RUN_ID}") as url:
        await migrate.upgrade(url)
        database = Database(create_engine(settings, url))
        yield database
        await database.close()


@dataclass
class Tenancy:
    """One tenant with one user, fresh for each test, and helpers to fill it."""

    db: Database
    tenant_id: str
    user_id: str

    @classmethod
    async def create(cls, db: Database) -> Tenancy:
        tenant = Tenant(slug=f"t-{uuid.uuid4().hex[:12]}", name="Tenant")
        async with db.session() as session:
            session.add(tenant)
            await session.flush()
            user = User(tenant_id=tenant.id, email=f"{uuid.uuid4().hex}@example.test")
            session.add(user)
            await session.commit()
        return cls(db, tenant.id, user.id)

    async def kb(self, embedding_model: str | None = None) -> str:
        async with self.db.session() as session:
            kb = KnowledgeBase(
                tenant_id=self.tenant_id,
                owner_id=self.user_id,
                name="kb",
                embedding_model=embedding_model,
            )
            session.add(kb)
            await session.commit()
        return kb.id

    async def document(
        self, index: KnowledgeIndex, kb_id: str, *texts: str | tuple[str, str]
    ) -> str:
        """A document of one chunk per text (or (heading, text)), indexed and committed."""
        async with self.db.session() as session:
            document = Document(
                kb_id=kb_id,
                tenant_id=self.tenant_id,
                filename="doc.txt",
                media_type="text/plain",
                size_bytes=1,
                sha256=uuid.uuid4().hex,
                blob_key=uuid.uuid4().hex,
            )
            session.add(document)
            await session.commit()
        await write(index, self, kb_id, document.id, texts)
        return document.id


def drafts_of(texts: Sequence[str | tuple[str, str]]) -> list[ChunkDraft]:
    drafts = []
    for ord_, item in enumerate(texts):
        heading, text = item if isinstance(item, tuple) else (None, item)
        drafts.append(ChunkDraft(ord=ord_, text=text, heading=heading, page=ord_ + 1, tokens=5))
    return drafts


async def write(
    index: KnowledgeIndex,
    tenancy: Tenancy,
    kb_id: str,
    document_id: str,
    texts: Sequence[str | tuple[str, str]],
) -> int:
    drafts = drafts_of(texts)
    vectors = await index.embed(drafts)
    async with tenancy.db.session() as session:
        count = await index.write_document(
            session,
            tenant_id=tenancy.tenant_id,
            kb_id=kb_id,
            document_id=document_id,
            drafts=drafts,
            vectors=vectors,
        )
        await session.commit()
    return count


async def delete(index: KnowledgeIndex, db: Database, document_id: str) -> None:
    async with db.session() as session:
        await index.delete_document(session, document_id)
        await session.commit()


def texts_of(result: SearchResult) -> list[str]:
    return [p.text for p in result.passages]


@pytest.fixture
async def tenancy(db: Database) -> Tenancy:
    return await Tenancy.create(db)


@pytest.fixture
def lexical(db: Database) -> KnowledgeIndex:
    return KnowledgeIndex(db, None)


@pytest.fixture
def embedder() -> BagOfWordsEmbedder:
    return BagOfWordsEmbedder()


@pytest.fixture(params=["exact", "binary"])
def hybrid(
    request: pytest.FixtureRequest, db: Database, embedder: BagOfWordsEmbedder
) -> KnowledgeIndex:
    """A hybrid index whose vector search is exact, or goes through binary codes and exact
    rescoring at every size (the candidate selection itself is tested in test_vectors)."""
    if request.param == "exact":
        return KnowledgeIndex(db, embedder)
    return KnowledgeIndex(db, embedder, vectors=VectorIndex(binary_min_rows=1))


def same_kind(index: KnowledgeIndex) -> KnowledgeIndex:
    """A fresh index (nothing cached) that searches vectors the way `index` does."""
    vectors = VectorIndex(binary_min_rows=index.vectors.binary_min_rows)
    return KnowledgeIndex(index.db, index.embedder, vectors=vectors)


async def test_search_finds_the_passage_with_its_place(
    lexical: KnowledgeIndex, tenancy: Tenancy
) -> None:
    kb = await tenancy.kb()
    doc = await tenancy.document(
        lexical,
        kb,
        "Bananas are rich in potassium.",
        ("Install > On Linux", "Run the installer script as root to set up the daemon."),
        "The quarterly report is due on Friday.",
    )
    result = await lexical.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="How do I install on Linux?", top_k=3
    )
    assert result.mode == "lexical"
    best = result.passages[0]
    assert best.text == "Run the installer script as root to set up the daemon."
    assert (best.document_id, best.kb_id, best.heading, best.page) == (
        doc,
        kb,
        "Install > On Linux",
        2,
    )
    assert best.score > 0
    assert all(p.score > 0 for p in result.passages)
    scores = [p.score for p in result.passages]
    assert scores == sorted(scores, reverse=True)


async def test_a_heading_hit_outranks_the_same_word_in_the_text(
    lexical: KnowledgeIndex, tenancy: Tenancy
) -> None:
    kb = await tenancy.kb()
    await tenancy.document(
        lexical,
        kb,
        "Telemetry is sent once a day to the collector.",
        ("Telemetry", "It is sent once a day to the collector."),
    )
    result = await lexical.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="telemetry", top_k=2
    )
    assert [p.heading for p in result.passages] == ["Telemetry", None]


async def test_dotted_and_snake_case_names_match_their_words(
    lexical: KnowledgeIndex, tenancy: Tenancy
) -> None:
    """Both databases split `json.dumps` or `read_text` into words, as queries are split
    (Postgres' own parser would keep them whole, so `json` would never match)."""
    kb = await tenancy.kb()
    await tenancy.document(
        lexical,
        kb,
        ("json.dumps", "Serialize an object to a formatted string."),
        ("pathlib.Path.read_text", "Open the file in text mode, read it, and close it."),
        "Unrelated prose about gardens.",
    )

    async def headings(query: str) -> list[str | None]:
        result = await lexical.search(
            tenant_id=tenancy.tenant_id, kb_ids=[kb], query=query, top_k=3
        )
        return [p.heading for p in result.passages]

    assert await headings("json") == ["json.dumps"]
    assert await headings("dumps") == ["json.dumps"]
    assert await headings("json.dumps") == ["json.dumps"]
    assert await headings("pathlib") == ["pathlib.Path.read_text"]
    assert (await headings("read_text"))[0] == "pathlib.Path.read_text"


async def test_a_rare_word_outweighs_repeated_common_ones(
    lexical: KnowledgeIndex, tenancy: Tenancy
) -> None:
    """The rank weighs a term by its rarity (bm25 on SQLite, idf-weighted ts_rank on
    Postgres): the one chunk with the rare word beats chunks that repeat the common ones."""
    kb = await tenancy.kb()
    common = [f"The file list is returned as a file list, file after file ({i})." for i in range(8)]
    await tenancy.document(lexical, kb, *common, "Resolve a symlinked path of the file.")
    result = await lexical.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="file list symlinked", top_k=3
    )
    assert result.passages[0].text == "Resolve a symlinked path of the file."
    assert len(result.passages) == 3


@pytest.mark.parametrize("shape", ["lexical", "hybrid"])
async def test_another_tenants_identical_text_is_never_returned(
    db: Database, embedder: BagOfWordsEmbedder, shape: str
) -> None:
    index = KnowledgeIndex(db, embedder if shape == "hybrid" else None)
    model = embedder.model if shape == "hybrid" else None
    ours, theirs = await Tenancy.create(db), await Tenancy.create(db)
    our_kb, their_kb = await ours.kb(model), await theirs.kb(model)
    text = "The launch code for project zebra is kept in the vault."
    our_doc = await ours.document(index, our_kb, text)
    await theirs.document(index, their_kb, text)
    # Even when a caller names the other tenant's knowledge base, the tenant filter holds.
    result = await index.search(
        tenant_id=ours.tenant_id, kb_ids=[our_kb, their_kb], query="zebra launch code", top_k=10
    )
    assert result.mode == shape
    assert [(p.document_id, p.kb_id) for p in result.passages] == [(our_doc, our_kb)]
    only_theirs = await index.search(
        tenant_id=ours.tenant_id, kb_ids=[their_kb], query="zebra launch code", top_k=10
    )
    assert only_theirs.passages == []


@pytest.mark.parametrize("shape", ["lexical", "hybrid"])
async def test_knowledge_base_and_document_filters(
    db: Database, embedder: BagOfWordsEmbedder, tenancy: Tenancy, shape: str
) -> None:
    index = KnowledgeIndex(db, embedder if shape == "hybrid" else None)
    model = embedder.model if shape == "hybrid" else None
    kb1, kb2 = await tenancy.kb(model), await tenancy.kb(model)
    doc1 = await tenancy.document(index, kb1, "Orchid care: water the orchid weekly.")
    doc2 = await tenancy.document(index, kb1, "Orchid repotting happens every two years.")
    doc3 = await tenancy.document(index, kb2, "Orchid species number about 28000.")

    async def documents(kb_ids: list[str], document_ids: list[str] | None = None) -> set[str]:
        result = await index.search(
            tenant_id=tenancy.tenant_id,
            kb_ids=kb_ids,
            query="orchid",
            top_k=10,
            document_ids=document_ids,
        )
        assert result.mode == (shape if kb_ids else "lexical")
        return {p.document_id for p in result.passages}

    assert await documents([kb1]) == {doc1, doc2}
    assert await documents([kb2]) == {doc3}
    assert await documents([kb1, kb2]) == {doc1, doc2, doc3}
    assert await documents([kb1], [doc2]) == {doc2}
    assert await documents([kb1, kb2], [doc1, doc3]) == {doc1, doc3}
    assert await documents([kb2], [doc1]) == set()  # a document of another kb
    assert await documents([kb1], []) == set()
    assert await documents([]) == set()


@pytest.mark.parametrize("shape", ["lexical", "hybrid"])
async def test_a_deleted_document_leaves_the_results_at_once(
    db: Database, embedder: BagOfWordsEmbedder, tenancy: Tenancy, shape: str
) -> None:
    index = KnowledgeIndex(db, embedder if shape == "hybrid" else None)
    kb = await tenancy.kb(embedder.model if shape == "hybrid" else None)
    keep = await tenancy.document(index, kb, "Glacier melt raises the sea level.")
    gone = await tenancy.document(index, kb, "Glacier tours start at the visitor centre.")

    async def found() -> set[str]:
        result = await index.search(
            tenant_id=tenancy.tenant_id, kb_ids=[kb], query="glacier", top_k=5
        )
        return {p.document_id for p in result.passages}

    assert await found() == {keep, gone}
    await delete(index, db, gone)
    assert await found() == {keep}
    async with db.session() as session:
        left = await session.scalar(
            select(func.count()).select_from(Chunk).where(Chunk.document_id == gone)
        )
        vectors = await session.scalar(
            select(func.count()).select_from(ChunkVector).where(ChunkVector.kb_id == kb)
        )
    assert left == 0
    assert vectors == (1 if shape == "hybrid" else 0)


async def test_writing_a_document_again_replaces_its_chunks(
    hybrid: KnowledgeIndex, tenancy: Tenancy, embedder: BagOfWordsEmbedder
) -> None:
    kb = await tenancy.kb(embedder.model)
    doc = await tenancy.document(hybrid, kb, "Copper wire conducts.", "Copper pipes last.")
    assert await write(hybrid, tenancy, kb, doc, ["Copper roofs age green.", "Copper is soft."])
    async with tenancy.db.session() as session:
        chunks = (
            await session.execute(select(Chunk.text).where(Chunk.document_id == doc))
        ).scalars()
        vectors = await session.scalar(
            select(func.count()).select_from(ChunkVector).where(ChunkVector.kb_id == kb)
        )
    assert sorted(chunks) == ["Copper is soft.", "Copper roofs age green."]
    assert vectors == 2
    result = await hybrid.search(tenant_id=tenancy.tenant_id, kb_ids=[kb], query="copper", top_k=10)
    assert sorted(texts_of(result)) == ["Copper is soft.", "Copper roofs age green."]


async def test_reused_chunk_ids_do_not_serve_stale_vectors(
    hybrid: KnowledgeIndex, tenancy: Tenancy, embedder: BagOfWordsEmbedder
) -> None:
    """SQLite gives the ids of deleted tail rows to the next insert; the cached vectors of
    the old rows must not answer for the new ones."""
    kb = await tenancy.kb(embedder.model)
    await tenancy.document(hybrid, kb, "Saturn has rings of ice.")
    old = await tenancy.document(hybrid, kb, "Pelicans dive for fish.")
    pelicans = await hybrid.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="pelicans", top_k=1
    )
    assert texts_of(pelicans) == ["Pelicans dive for fish."]
    await delete(hybrid, tenancy.db, old)
    await tenancy.document(hybrid, kb, "Volcanoes erupt lava.")
    # Only the vector list knows "magma" is near nothing; "volcanoes" must win in both.
    result = await hybrid.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="volcanoes", top_k=2
    )
    assert result.mode == "hybrid"
    assert texts_of(result)[0] == "Volcanoes erupt lava."
    assert "Pelicans dive for fish." not in texts_of(result)
    assert result.passages[0].score == pytest.approx(both_first())


HOSTILE = [
    '"',
    '""""',
    "'",
    "AND",
    "OR NOT AND",
    "*",
    "quantum*",
    ":",
    "text:quantum",
    "NEAR(",
    "NEAR(quantum entanglement, 2)",
    "!",
    "!quantum & | <-> :*",
    "(((",
    "^quantum",
    "-quantum +quantum",
    "\\",
    "\x00",
    "'; DROP TABLE kb_chunks; --",
    "?!.,;:()[]{}<>@#$%^&*~`|\\/\"'",
    "   ",
    "",
    "quantum " * 3000,
    "".join(chr(c) for c in range(33, 127)) * 200,
    "ünïcödé quántum 量子",
]


@pytest.mark.parametrize("shape", ["lexical", "hybrid"])
async def test_hostile_queries_never_fail(
    db: Database, embedder: BagOfWordsEmbedder, tenancy: Tenancy, shape: str
) -> None:
    index = KnowledgeIndex(db, embedder if shape == "hybrid" else None)
    kb = await tenancy.kb(embedder.model if shape == "hybrid" else None)
    await tenancy.document(index, kb, "Quantum entanglement links two particles.")
    for query in HOSTILE:
        result = await index.search(tenant_id=tenancy.tenant_id, kb_ids=[kb], query=query, top_k=3)
        assert result.mode == shape, query
        words = query_terms(query)
        if not any(ch.isalnum() for ch in query):
            assert result.passages == [], query
        elif "quantum" in words:
            assert texts_of(result) == ["Quantum entanglement links two particles."], query
    # Only stop words: nothing to match lexically.
    stop_only = await index.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="what is it and how", top_k=3
    )
    if shape == "lexical":
        assert stop_only.passages == []


async def test_common_terms_give_way_to_rare_ones(
    lexical: KnowledgeIndex, tenancy: Tenancy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a big index a term in many chunks costs more than it adds to the rank: with a
    rarer term beside it, it is left out; alone, all terms must match, newest first."""
    monkeypatch.setattr(lexical_module, "COMMON_DF", 3)
    kb = await tenancy.kb()
    await tenancy.document(
        lexical,
        kb,
        "Harbor crane lifts containers.",
        "Harbor pilot guides ships.",
        "Harbor tides follow the moon.",
        "Lighthouse keeper logbook.",
    )
    if lexical.dialect == "postgresql":  # term frequencies come from the planner's statistics
        async with tenancy.db.session() as session:
            await session.execute(sql("ANALYZE kb_chunks"))
            await session.commit()

    async def search(query: str) -> SearchResult:
        return await lexical.search(tenant_id=tenancy.tenant_id, kb_ids=[kb], query=query, top_k=5)

    # "harbor" is in 3 chunks (common here), "pilot" and "crane" in one each.
    rare = await search("harbor pilot crane")
    assert sorted(texts_of(rare)) == [
        "Harbor crane lifts containers.",
        "Harbor pilot guides ships.",
    ]
    assert all(p.score > 0 for p in rare.passages)
    newest = await search("harbor")
    assert texts_of(newest) == [
        "Harbor tides follow the moon.",
        "Harbor pilot guides ships.",
        "Harbor crane lifts containers.",
    ]
    assert [p.score for p in newest.passages] == [0.0, 0.0, 0.0]
    assert (await search("harbor unknownword")).passages == newest.passages
    assert (await search("unknownword")).passages == []
    # Rare terms join from the rarest (ties by name) while within the budget.
    monkeypatch.setattr(lexical_module, "RANKED_BUDGET", 1)
    assert texts_of(await search("tides lighthouse")) == ["Lighthouse keeper logbook."]


async def test_hybrid_fuses_lexical_and_vector_ranks(
    db: Database, lexical: KnowledgeIndex, hybrid: KnowledgeIndex, tenancy: Tenancy
) -> None:
    kb = await tenancy.kb("test:bow-1")
    await tenancy.document(hybrid, kb, "Car engine repair guide.")  # "car" ~ "automobile"
    await tenancy.document(hybrid, kb, "Automobile maintenance schedule.")
    await tenancy.document(hybrid, kb, "Banana bread recipe.")
    words_only = await lexical.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="automobile", top_k=3
    )
    assert words_only.mode == "lexical"
    assert texts_of(words_only) == ["Automobile maintenance schedule."]

    fused = await hybrid.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="automobile", top_k=3
    )
    assert fused.mode == "hybrid"
    # Vector ranks: maintenance (cos 0.58), engine (0.5), banana (0); lexical: maintenance.
    assert texts_of(fused) == [
        "Automobile maintenance schedule.",
        "Car engine repair guide.",
        "Banana bread recipe.",
    ]
    k, vector = index_module.FUSION_K, index_module.VECTOR_WEIGHT
    assert [p.score for p in fused.passages] == pytest.approx(
        [both_first(), vector / (k + 2), vector / (k + 3)]
    )
    assert (fused.passages[1].heading, fused.passages[1].page) == (None, 1)
    top1 = await hybrid.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="automobile", top_k=1
    )
    assert texts_of(top1) == ["Automobile maintenance schedule."]


def both_first() -> float:
    """The fused score of a chunk first in both the lexical and the vector list."""
    weights = index_module.LEXICAL_WEIGHT + index_module.VECTOR_WEIGHT
    return weights / (index_module.FUSION_K + 1)


def test_weighted_fusion_prefers_the_heavier_list() -> None:
    fused = reciprocal_rank_fusion([[1, 2], [2, 3]], k=10, weights=[0.5, 1.0])
    assert dict(fused) == pytest.approx({2: 0.5 / 12 + 1 / 11, 3: 1 / 12, 1: 0.5 / 11})
    assert [chunk_id for chunk_id, _ in fused] == [2, 3, 1]
    with pytest.raises(ValueError, match="1 weights for 2 rankings"):
        reciprocal_rank_fusion([[1], [2]], weights=[1.0])


async def test_hybrid_fuses_only_the_first_lexical_hits(
    hybrid: KnowledgeIndex,
    tenancy: Tenancy,
    embedder: BagOfWordsEmbedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lexical hit below LEXICAL_FUSION_DEPTH adds nothing to its fused score."""
    monkeypatch.setattr(index_module, "LEXICAL_FUSION_DEPTH", 1)
    kb = await tenancy.kb(embedder.model)
    await tenancy.document(hybrid, kb, "Comet comet comet tail.")
    await tenancy.document(hybrid, kb, "Comet orbit.")
    result = await hybrid.search(tenant_id=tenancy.tenant_id, kb_ids=[kb], query="comet", top_k=2)
    k, lexical, vector = (
        index_module.FUSION_K,
        index_module.LEXICAL_WEIGHT,
        index_module.VECTOR_WEIGHT,
    )
    scores = sorted(p.score for p in result.passages)
    # Both are in the vector list (ranks 1 and 2); only the first lexical hit is fused.
    assert len(scores) == 2
    assert sum(scores) == pytest.approx(vector / (k + 1) + vector / (k + 2) + lexical / (k + 1))


def test_reciprocal_rank_fusion() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]])
    assert [chunk_id for chunk_id, _ in fused] == [1, 3, 2, 4]
    assert dict(fused) == pytest.approx(
        {1: 1 / 61 + 1 / 62, 3: 1 / 63 + 1 / 61, 2: 1 / 62, 4: 1 / 63}
    )
    # Equal sums: the id ranked better somewhere wins, then the smaller id.
    assert [c for c, _ in reciprocal_rank_fusion([[5, 6], [6, 5]])] == [5, 6]
    assert reciprocal_rank_fusion([[], []]) == []


async def test_a_knowledge_base_of_another_model_answers_lexically(
    db: Database, tenancy: Tenancy
) -> None:
    other = BagOfWordsEmbedder("test:other", dim=32)
    index = KnowledgeIndex(db, BagOfWordsEmbedder())
    kb = await tenancy.kb(other.model)
    await tenancy.document(KnowledgeIndex(db, other), kb, "Automobile maintenance schedule.")
    await tenancy.document(KnowledgeIndex(db, other), kb, "Car engine repair guide.")
    result = await index.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="automobile", top_k=3
    )
    assert result.mode == "lexical"
    assert texts_of(result) == ["Automobile maintenance schedule."]


async def test_reindex_switches_models_atomically(
    db: Database, tenancy: Tenancy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "REINDEX_BATCH", 2)
    old, new = BagOfWordsEmbedder("test:bow-old", dim=64), BagOfWordsEmbedder("test:bow-new", 48)
    old_index, new_index = KnowledgeIndex(db, old), KnowledgeIndex(db, new)
    kb = await tenancy.kb(old.model)
    texts = [
        "Car engine repair guide.",
        "Automobile maintenance schedule.",
        "Banana bread recipe.",
        "Vehicle registration renewal is due yearly.",
        "Sourdough starter feeding.",
    ]
    for text in texts:
        await tenancy.document(old_index, kb, text)
    expected = [
        "Automobile maintenance schedule.",
        "Car engine repair guide.",
        "Vehicle registration renewal is due yearly.",
    ]

    async def search(index: KnowledgeIndex) -> SearchResult:
        return await index.search(
            tenant_id=tenancy.tenant_id, kb_ids=[kb], query="automobile", top_k=3
        )

    async def models() -> tuple[str | None, dict[str, int]]:
        async with db.session() as session:
            model = await session.scalar(
                select(KnowledgeBase.embedding_model).where(KnowledgeBase.id == kb)
            )
            rows = await session.execute(
                select(ChunkVector.model, func.count())
                .where(ChunkVector.kb_id == kb)
                .group_by(ChunkVector.model)
            )
            return model, {name: count for name, count in rows.all()}  # noqa: C416

    before = await search(old_index)
    assert before.mode == "hybrid"
    assert texts_of(before)[:2] == expected[:2]
    assert (await search(new_index)).mode == "lexical"

    new.block_at = 2  # the second batch waits: the first one is committed by then
    reindex = asyncio.create_task(new_index.reindex(kb))
    async with asyncio.timeout(10):
        await new.blocked.wait()
    assert await models() == (old.model, {old.model: 5, new.model: 2})
    during_old, during_new = await search(old_index), await search(new_index)
    assert (during_old.mode, texts_of(during_old)) == (before.mode, texts_of(before))
    assert (during_new.mode, texts_of(during_new)) == ("lexical", [expected[0]])
    new.release.set()
    async with asyncio.timeout(10):
        assert await reindex == 5

    assert await models() == (new.model, {new.model: 5})
    after = await search(new_index)
    assert after.mode == "hybrid"
    assert texts_of(after) == expected
    stale = await search(old_index)
    assert (stale.mode, texts_of(stale)) == ("lexical", [expected[0]])
    # Nothing left to do: a second run embeds nothing.
    assert await new_index.reindex(kb) == 0


async def test_embed_returns_one_row_per_draft_and_write_checks_it(
    hybrid: KnowledgeIndex, lexical: KnowledgeIndex, tenancy: Tenancy
) -> None:
    drafts = drafts_of([("Intro", "Alpha beta."), "Gamma delta.", "Epsilon."])
    done: list[tuple[int, int]] = []

    async def progress(count: int, total: int) -> None:
        done.append((count, total))

    embedded = await hybrid.embed(drafts, progress=progress)
    assert embedded is not None
    assert embedded.model == "test:bow-1"
    assert embedded.vectors.shape == (3, 64)
    assert embedded.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(embedded.vectors, axis=1), 1.0)
    assert done == [(3, 3)]
    assert await lexical.embed(drafts) is None
    kb = await tenancy.kb()
    async with tenancy.db.session() as session:
        with pytest.raises(ValueError, match="2 vectors for 3 chunks"):
            await hybrid.write_document(
                session,
                tenant_id=tenancy.tenant_id,
                kb_id=kb,
                document_id="missing",
                drafts=drafts,
                vectors=EmbeddedChunks(embedded.model, embedded.vectors[:2]),
            )


async def _matrix_of(index: KnowledgeIndex, tenancy: Tenancy, kb_id: str) -> KbMatrix:
    """The index's cached matrix of the knowledge base, brought to its current version."""
    assert index.embedder is not None
    async with tenancy.db.session() as session:
        version = await session.scalar(
            select(KnowledgeBase.updated_at).where(KnowledgeBase.id == kb_id)
        )
        return await index.vectors.matrix(
            session,
            tenant_id=tenancy.tenant_id,
            kb_id=kb_id,
            model=index.embedder.model,
            version=version,
        )


def _same_matrix(refreshed: KbMatrix, loaded: KbMatrix) -> None:
    assert refreshed.chunk_ids.tolist() == loaded.chunk_ids.tolist()
    np.testing.assert_array_equal(refreshed.matrix, loaded.matrix)
    if loaded.codes is None:
        assert refreshed.codes is None
    else:
        assert refreshed.codes is not None
        np.testing.assert_array_equal(refreshed.codes, loaded.codes)
    documents = {code: name for name, code in refreshed.documents.items()}
    loaded_documents = {code: name for name, code in loaded.documents.items()}
    assert [documents[c] for c in refreshed.document_codes.tolist()] == [
        loaded_documents[c] for c in loaded.document_codes.tolist()
    ]


async def test_a_write_refreshes_the_cached_vectors_without_a_full_load(
    db: Database, hybrid: KnowledgeIndex, tenancy: Tenancy, embedder: BagOfWordsEmbedder
) -> None:
    """After a change, a process's matrix drops the rows of deleted documents and appends
    the new rows; it equals a full load, and the deleted text is never returned."""
    kb = await tenancy.kb(embedder.model)
    await tenancy.document(hybrid, kb, "Saturn has rings of ice.", "Jupiter has storms.")
    pelicans = await tenancy.document(hybrid, kb, "Pelicans dive for fish.")
    assert texts_of(
        await hybrid.search(tenant_id=tenancy.tenant_id, kb_ids=[kb], query="pelicans", top_k=1)
    ) == ["Pelicans dive for fish."]
    loads = hybrid.vectors.loads
    await delete(hybrid, tenancy.db, pelicans)
    volcanoes = await tenancy.document(hybrid, kb, "Volcanoes erupt lava.", "Magma cools.")
    result = await hybrid.search(
        tenant_id=tenancy.tenant_id, kb_ids=[kb], query="volcanoes pelicans", top_k=5
    )
    assert texts_of(result)[0] == "Volcanoes erupt lava."
    assert "Pelicans dive for fish." not in texts_of(result)
    assert (hybrid.vectors.loads, hybrid.vectors.refreshes) == (loads, 1)
    only_volcanoes = await hybrid.search(
        tenant_id=tenancy.tenant_id,
        kb_ids=[kb],
        query="magma",
        top_k=5,
        document_ids=[volcanoes],
    )
    assert {p.document_id for p in only_volcanoes.passages} == {volcanoes}
    _same_matrix(
        await _matrix_of(hybrid, tenancy, kb),
        await _matrix_of(same_kind(hybrid), tenancy, kb),
    )


async def test_an_older_chunk_gaining_a_vector_reloads_the_matrix(
    db: Database, hybrid: KnowledgeIndex, tenancy: Tenancy, embedder: BagOfWordsEmbedder
) -> None:
    """A chunk written without a vector (no embedder in that process) and embedded later
    by `reindex` (in another process) is older than the cached rows: the refresh gives way
    to a full load."""
    kb = await tenancy.kb(embedder.model)
    await tenancy.document(KnowledgeIndex(db, None), kb, "Lighthouse keeper logbook.")
    await tenancy.document(hybrid, kb, "Harbor pilot guides ships.")
    before = await _matrix_of(hybrid, tenancy, kb)
    assert len(before.chunk_ids) == 1
    loads = hybrid.vectors.loads
    assert await KnowledgeIndex(db, embedder).reindex(kb) == 1
    after = await _matrix_of(hybrid, tenancy, kb)
    assert len(after.chunk_ids) == 2
    assert (hybrid.vectors.loads, hybrid.vectors.refreshes) == (loads + 1, 0)
    _same_matrix(after, await _matrix_of(same_kind(hybrid), tenancy, kb))


@pytest.mark.parametrize("quiet_chunks", [2, 30])
async def test_binary_candidates_keep_the_document_filter_inside_the_search(
    tenancy: Tenancy,
    embedder: BagOfWordsEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    quiet_chunks: int,
) -> None:
    """With binary codes and fewer candidates than rows, a search filtered to one document
    answers from that document even when every other row is nearer the query: the filter
    masks rows before the candidates are chosen (with 30 chunks, more than the candidates)."""
    monkeypatch.setattr(vectors_module, "RESCORE_MIN", 4)
    monkeypatch.setattr(vectors_module, "RESCORE_PER_RESULT", 1)
    index = KnowledgeIndex(tenancy.db, embedder, vectors=VectorIndex(binary_min_rows=1))
    kb = await tenancy.kb(embedder.model)
    await tenancy.document(index, kb, *[f"Comet sighting number {i}." for i in range(60)])
    quiet = await tenancy.document(
        index, kb, *[f"Lighthouse keeper log entry {i}." for i in range(quiet_chunks)]
    )
    result = await index.search(
        tenant_id=tenancy.tenant_id,
        kb_ids=[kb],
        query="comet sighting",
        top_k=2,
        document_ids=[quiet],
    )
    assert result.mode == "hybrid"
    assert len(result.passages) == 2
    assert {p.document_id for p in result.passages} == {quiet}
    assert index.vectors.loads == 1
