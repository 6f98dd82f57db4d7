"""The corpus (standard-library docstrings), the judged queries, and the ranking metrics."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.knowledge.common import QUERIES_PATH

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, slots=True)
class Docstring:
    id: str  # "json.dumps"
    text: str


def read_queries_file(path: Path = QUERIES_PATH) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(path.read_bytes())
    return document


def stdlib_corpus(modules: Sequence[str], *, min_chars: int) -> list[Docstring]:
    """One document per docstring of `modules` (see `queries.json` for the rules); sorted by
    id. Identical docstrings (aliases, bound methods of a module-level instance) are kept
    once, under the id with the fewest dots, then the shortest, then the first."""
    found: dict[str, str] = {}
    for name in modules:
        module = importlib.import_module(name)
        _add_docstring(found, name, module, min_chars)
        for attr in _public_names(module):
            obj = getattr(module, attr, None)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            if getattr(obj, "__module__", None) == "builtins":
                continue
            _add_docstring(found, f"{name}.{attr}", obj, min_chars)
            if inspect.isclass(obj):
                for member_name, member in vars(obj).items():
                    if member_name.startswith("_"):
                        continue
                    if isinstance(member, staticmethod | classmethod):
                        member = member.__func__
                    if inspect.isroutine(member) or inspect.isdatadescriptor(member):
                        _add_docstring(found, f"{name}.{attr}.{member_name}", member, min_chars)
    first_id: dict[str, str] = {}
    for doc_id in sorted(found, key=lambda i: (i.count("."), len(i), i)):
        first_id.setdefault(found[doc_id], doc_id)
    return sorted((Docstring(i, text) for text, i in first_id.items()), key=lambda d: d.id)


def _public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        own = {module.__name__, "_" + module.__name__.rsplit(".", 1)[-1]}
        names = [
            name
            for name in dir(module)
            if not name.startswith("_")
            and getattr(getattr(module, name), "__module__", None) in own
        ]
    return sorted({name for name in names if not name.startswith("_")})


def _add_docstring(found: dict[str, str], doc_id: str, obj: Any, min_chars: int) -> None:
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str):
        text = inspect.cleandoc(doc)
        if len(text) >= min_chars:
            found[doc_id] = text


def docstring_markdown(doc: Docstring) -> bytes:
    """A docstring as the file a user would upload: its id as the title."""
    return f"# {doc.id}\n\n{doc.text}\n".encode()


def module_pages(docs: Sequence[Docstring], modules: Sequence[str]) -> list[tuple[str, bytes]]:
    """The corpus as one Markdown page per module (`os.path.join` goes to `os.path`, not
    `os`): the module's docstring, then a `##` section per other docstring."""
    by_length = sorted(modules, key=len, reverse=True)
    pages: dict[str, list[str]] = {name: [f"# {name}\n"] for name in modules}
    for doc in docs:
        owner = next(m for m in by_length if doc.id == m or doc.id.startswith(m + "."))
        pages[owner].append(doc.text if doc.id == owner else f"## {doc.id}\n\n{doc.text}")
    return [
        (name, "\n\n".join(parts).encode() + b"\n")
        for name, parts in pages.items()
        if len(parts) > 1
    ]


# Judgements and metrics ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    id: str
    text: str
    relevant: dict[str, int]  # docstring id -> grade (1 related, 2 answers it)


@dataclass(frozen=True, slots=True)
class Judgements:
    queries: list[Query]  # judged ids missing from the corpus removed, empty queries dropped
    judged_ids: int  # (query, id) pairs in the file
    missing_ids: list[str]  # judged ids that are not in this interpreter's corpus
    skipped_queries: list[str]  # queries left with no judged document in the corpus


def load_judgements(document: Mapping[str, Any], corpus_ids: Set[str]) -> Judgements:
    queries: list[Query] = []
    missing: set[str] = set()
    skipped: list[str] = []
    judged = 0
    for entry in document["queries"]:
        relevant = {doc_id: int(grade) for doc_id, grade in entry["relevant"].items()}
        judged += len(relevant)
        missing.update(doc_id for doc_id in relevant if doc_id not in corpus_ids)
        kept = {doc_id: grade for doc_id, grade in relevant.items() if doc_id in corpus_ids}
        if any(grade > 0 for grade in kept.values()):
            queries.append(Query(entry["id"], entry["query"], kept))
        else:
            skipped.append(entry["id"])
    return Judgements(queries, judged, sorted(missing), skipped)


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """The share of the relevant documents (grade > 0) found in the first k."""
    wanted = {doc_id for doc_id, grade in relevant.items() if grade > 0}
    if not wanted:
        raise ValueError("recall needs at least one relevant document")
    return len(wanted.intersection(ranked[:k])) / len(wanted)


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Normalised discounted cumulative gain with linear gains: the sum of grade/log2(rank+1)
    over the first k, divided by the same sum for the ideal order of every judged grade."""
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    if not ideal:
        raise ValueError("nDCG needs at least one relevant document")
    dcg = sum(
        relevant.get(doc_id, 0) / math.log2(rank + 2) for rank, doc_id in enumerate(ranked[:k])
    )
    best = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    return dcg / best


def distinct(items: Iterator[str] | Sequence[str]) -> list[str]:
    """First occurrences in order (several chunks of a document count as the document)."""
    return list(dict.fromkeys(items))


# Databases -------------------------------------------------------------------------------
