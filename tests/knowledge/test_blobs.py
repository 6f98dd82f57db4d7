"""One suite for every blob store: the file store in a temporary directory and the S3 store
against a real S3-compatible HTTP server (moto's, in a thread on a loopback port)."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiobotocore.session import ClientCreatorContext, get_session
from moto.server import ThreadedMotoServer

from chatplane.errors import NotFound
from chatplane.knowledge.blobs import (
    S3_EXTRA,
    BlobNotFound,
    BlobStore,
    FileBlobStore,
    MissingDependency,
    S3BlobStore,
    create_blob_store,
)
from tests.conftest import make_settings
from tests.knowledge.files import random_bytes

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

BUCKET = "chatplane-blobs"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
UNSAFE_KEYS = [
    "",
    "../escape",
    "a/../../escape",
    "/etc/passwd",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    ".hidden",
    "a\\b",
    "a b",
    "nul\x00byte",
    "x" * 513,
]


def raw_s3(endpoint: str) -> ClientCreatorContext[S3Client]:
    """A client of our own, to set up and inspect the bucket behind the store's back."""
    return get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """The server, with BUCKET made by a plain PUT (moto checks no signature by default)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials where botocore looks for them, as an operator would set them."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(params=["file", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, aws_environment: None
) -> AsyncIterator[BlobStore]:
    if request.param == "file":
        blobs: BlobStore = FileBlobStore(tmp_path / "blobs")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        # A prefix of its own per test: every test starts from an empty store.
        blobs = S3BlobStore(BUCKET, f"{os.urandom(6).hex()}/blobs", endpoint_url=endpoint)
    try:
        yield blobs
    finally:
        await blobs.close()


async def test_put_get_overwrite_delete(store: BlobStore) -> None:
    key = "tenant1/kb1/doc1"
    assert not await store.exists(key)
    await store.put(key, b"first version")
    assert await store.exists(key)
    assert await store.get(key) == b"first version"
    await store.put(key, b"second")
    assert await store.get(key) == b"second"
    await store.delete(key)
    assert not await store.exists(key)
    with pytest.raises(BlobNotFound):
        await store.get(key)


async def test_missing_key_is_not_found_and_delete_of_it_is_a_no_op(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound) as caught:
        await store.get("tenant1/kb1/never-written")
    assert isinstance(caught.value, NotFound)
    assert caught.value.status == 404
    await store.delete("tenant1/kb1/never-written")
    assert not await store.exists("tenant1/kb1/never-written")


async def test_keys_are_independent(store: BlobStore) -> None:
    await store.put("t/kb/a", b"A")
    await store.put("t/kb/b", b"B")
    await store.put("t/other/a", b"other A")
    await store.delete("t/kb/a")
    assert await store.get("t/kb/b") == b"B"
    assert await store.get("t/other/a") == b"other A"
    assert not await store.exists("t/kb/a")


async def test_empty_and_large_blobs_round_trip(store: BlobStore) -> None:
    large = random_bytes(6 * 1024 * 1024 + 123)
    await store.put("t/kb/empty", b"")
    await store.put("t/kb/large", large)
    assert await store.get("t/kb/empty") == b""
    assert await store.get("t/kb/large") == large


async def test_concurrent_puts_and_gets(store: BlobStore) -> None:
    payloads = {f"t/kb/doc-{i}": random_bytes(10_000 + i, seed=i) for i in range(12)}
    await asyncio.gather(*(store.put(key, data) for key, data in payloads.items()))
    got = await asyncio.gather(*(store.get(key) for key in payloads))
    assert dict(zip(payloads, got, strict=True)) == payloads


@pytest.mark.parametrize("key", UNSAFE_KEYS)
async def test_unsafe_keys_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="unsafe blob key"):
        await store.put(key, b"x")
    with pytest.raises(ValueError, match="unsafe blob key"):
        await store.get(key)
    with pytest.raises(ValueError, match="unsafe blob key"):
        await store.exists(key)
    with pytest.raises(ValueError, match="unsafe blob key"):
        await store.delete(key)


# --- each store's own promises ----------------------------------------------------------


async def test_file_store_writes_under_its_root_and_leaves_no_temporary_files(
    tmp_path: Path,
) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    await store.put("t/kb/doc", b"one")
    await store.put("t/kb/doc", b"two")
    assert (tmp_path / "blobs" / "t" / "kb" / "doc").read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path / "blobs" / "t" / "kb")) == ["doc"]
    for key in UNSAFE_KEYS:
        with pytest.raises(ValueError, match="unsafe blob key"):
            await store.put(key, b"x")
    assert sorted(os.listdir(tmp_path)) == ["blobs"]


async def test_file_store_a_directory_is_not_a_blob(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    await store.put("t/kb/doc", b"x")
    assert not await store.exists("t/kb")
    with pytest.raises(BlobNotFound):
        await store.get("t/kb")
    with pytest.raises(BlobNotFound):
        await store.get("t/kb/doc/below-a-file")
    await store.delete("t/kb")
    assert await store.get("t/kb/doc") == b"x"


async def test_s3_store_keeps_objects_under_its_prefix(
    s3_endpoint: str, aws_environment: None
) -> None:
    prefix = f"{os.urandom(6).hex()}/blobs"
    store = S3BlobStore(BUCKET, f"/{prefix}/", endpoint_url=s3_endpoint)
    try:
        await store.put("t/kb/doc", b"payload")
    finally:
        await store.close()
    async with raw_s3(s3_endpoint) as client:
        listed = await client.list_objects_v2(Bucket=BUCKET, Prefix=prefix.split("/")[0])
    assert [item["Key"] for item in listed["Contents"]] == [f"{prefix}/t/kb/doc"]


# --- the factory ------------------------------------------------------------------------


def test_default_store_is_files_under_the_data_dir(tmp_path: Path) -> None:
    store = create_blob_store(make_settings(tmp_path))
    assert isinstance(store, FileBlobStore)
    assert store.root == tmp_path.absolute() / "blobs"


def test_file_url_names_the_root(tmp_path: Path) -> None:
    store = create_blob_store(make_settings(tmp_path, blob_url=f"file://{tmp_path}/my%20blobs"))
    assert isinstance(store, FileBlobStore)
    assert store.root == tmp_path / "my blobs"


async def test_s3_url_names_bucket_prefix_and_endpoint(tmp_path: Path, s3_endpoint: str) -> None:
    settings = make_settings(
        tmp_path, blob_url="s3://chatplane-blobs/kb/originals", s3_endpoint_url=s3_endpoint
    )
    store = create_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == ("chatplane-blobs", "kb/originals")
    await store.close()


@pytest.mark.parametrize(
    "url", ["file://relative/path", "ftp://host/x", "s3:///no-bucket", "redis://localhost"]
)
def test_bad_blob_urls_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError, match="CHATPLANE_BLOB_URL"):
        create_blob_store(make_settings(tmp_path, blob_url=url))


def test_missing_s3_library_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("aiobotocore", "aiobotocore.config", "aiobotocore.session"):
        monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(MissingDependency, match=S3_EXTRA.replace("[", r"\[").replace("]", r"\]")):
        create_blob_store(make_settings(tmp_path, blob_url="s3://bucket/prefix"))
