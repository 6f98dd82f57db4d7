"""Secrets at rest: sealed with the derived key, opened with it, keys of the wrong size refused."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chatplane.crypto import SecretBox, encryption_key
from tests.conftest import make_settings


def test_a_secret_sealed_with_the_derived_key_opens_with_the_same_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    key = encryption_key(settings)
    sealed = SecretBox(key).encrypt("sk-upstream", context="model-a")

    raw = base64.urlsafe_b64decode(sealed.partition(".")[2])
    assert AESGCM(key).decrypt(raw[:12], raw[12:], b"model-a") == b"sk-upstream"
    assert SecretBox(encryption_key(settings)).decrypt(sealed, context="model-a") == "sk-upstream"


def test_a_key_of_another_size_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBox(os.urandom(16))
