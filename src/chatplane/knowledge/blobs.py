"""Where uploaded originals live: a directory (the embedded shape) or an S3-compatible bucket
(the scaled shape, shared by every web process and worker). `create_blob_store` picks one
from `CHATPLANE_BLOB_URL`.

Keys are relative paths of safe segments ("tenant/kb/document"); both stores refuse any other
key, so a key can never name a file outside the store's root or prefix."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from chatplane.errors import ChatplaneError, NotFound
from chatplane.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

S3_EXTRA = "chatplane[s3]"
MAX_KEY_LENGTH = 512
# Segments start with a letter, digit, "_" or "-": never ".", "..", a hidden or temp file.
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


class BlobNotFound(NotFound):
    code = "blob_not_found"
    title = "The stored file is missing"


class MissingDependency(ChatplaneError):
    code = "missing_dependency"
    title = "An optional dependency is not installed"


class BlobStore(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes:
        """The blob's bytes; raises BlobNotFound."""
        ...

    async def delete(self, key: str) -> None:
        """Removes the blob; a no-op when it is missing."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def close(self) -> None: ...


def validate_key(key: str) -> str:
    if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
        raise ValueError(f"unsafe blob key {key[:80]!r}: use 'segment/segment' of [A-Za-z0-9._-]")
    return key


def create_blob_store(settings: Settings) -> BlobStore:
    """A file store under `<data dir>/blobs`, or the one `blob_url` names: `file:///abs/path`
    or `s3://bucket/prefix` (endpoint from `s3_endpoint_url`; credentials from the standard
    AWS environment variables and files, which botocore reads)."""
    url = settings.blob_url
    if not url:
        return FileBlobStore(settings.data_dir / "blobs")
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise ValueError(f"CHATPLANE_BLOB_URL {url!r}: a file URL needs an absolute path")
        return FileBlobStore(path)
    if parts.scheme == "s3" and parts.netloc:
        return S3BlobStore(
            parts.netloc, parts.path.strip("/"), endpoint_url=settings.s3_endpoint_url
        )
    raise ValueError(f"CHATPLANE_BLOB_URL {url!r}: use file:///absolute/path or s3://bucket/prefix")


class FileBlobStore:
    """One file per key under `root`. A write goes to a temporary file in the same directory,
    is fsynced and then renamed over the key, so a reader sees the old blob or the new one,
    never a torn one. File I/O runs in threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))

    def path(self, key: str) -> Path:
        return self.root / validate_key(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(_write_atomically, self.path(key), data)

    async def get(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise BlobNotFound(f"No stored file {key!r}") from exc

    async def delete(self, key: str) -> None:
        path = self.path(key)
        with suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            await asyncio.to_thread(path.unlink)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def close(self) -> None:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name starts with ".", which no key segment does.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


class S3BlobStore:
    """Objects under `prefix/` in an S3 bucket, through aiobotocore: native asyncio on the
    aiohttp the app already uses, so no thread per request (boto3 would block a thread for
    each call of a 50 MB upload). The client opens on first use and `close` releases it."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError as exc:
            raise MissingDependency(
                f"The S3 blob store needs aiobotocore: pip install '{S3_EXTRA}'"
            ) from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._session = get_session()
        self._endpoint_url = endpoint_url
        self._config = AioConfig(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": 3, "mode": "standard"},
            # botocore's service models load from disk: in a thread, off the event loop.
            warm_up_loader_caches=True,
        )
        self._client: S3Client | None = None
        self._exits = AsyncExitStack()
        self._opening = asyncio.Lock()

    def object_key(self, key: str) -> str:
        key = validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, key: str, data: bytes) -> None:
        name = self.object_key(key)
        await (await self._s3()).put_object(Bucket=self.bucket, Key=name, Body=data)

    async def get(self, key: str) -> bytes:
        name = self.object_key(key)
        client = await self._s3()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=name)
        except client.exceptions.NoSuchKey as exc:
            raise BlobNotFound(f"No stored file {key!r}") from exc
        async with response["Body"] as body:
            return await body.read()

    async def delete(self, key: str) -> None:
        name = self.object_key(key)
        await (await self._s3()).delete_object(Bucket=self.bucket, Key=name)

    async def exists(self, key: str) -> bool:
        name = self.object_key(key)
        client = await self._s3()
        try:
            await client.head_object(Bucket=self.bucket, Key=name)
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def close(self) -> None:
        self._client = None
        await self._exits.aclose()

    async def _s3(self) -> S3Client:
        async with self._opening:  # one client, however many calls race to open it
            if self._client is None:
                context = self._session.create_client(
                    "s3", endpoint_url=self._endpoint_url, config=self._config
                )
                self._client = await self._exits.enter_async_context(context)
            return self._client
