"""Encryption of secrets at rest (upstream provider keys): AES-256-GCM.

The key is `CHATPLANE_ENCRYPTION_KEY` (32 bytes, base64), or, when unset, derived from the
secret key with HKDF, so the embedded shape needs no extra setting.

`cryptography` is imported where it is used (the AES-GCM cipher when a secret is first
sealed or opened: most servers store none), not when this module is."""

from __future__ import annotations

import base64
import binascii
import os
from typing import TYPE_CHECKING

from chatplane.errors import ChatplaneError
from chatplane.settings import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "v1"
NONCE_BYTES = 12
KEY_BYTES = 32
HKDF_INFO = b"chatplane/secrets-at-rest"


class DecryptionFailed(ChatplaneError):
    code = "decryption_failed"
    status = 500
    title = "A stored secret cannot be decrypted (was the encryption key changed?)"


def encryption_key(settings: Settings) -> bytes:
    if settings.encryption_key is not None:
        raw = settings.encryption_key.get_secret_value()
        try:
            key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("CHATPLANE_ENCRYPTION_KEY must be base64") from exc
        if len(key) != KEY_BYTES:
            raise ValueError("CHATPLANE_ENCRYPTION_KEY must decode to 32 bytes")
        return key
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=HKDF_INFO).derive(
        settings.signing_key.encode()
    )


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("an AES-256-GCM key is 32 bytes")
        self._key = key
        self._cipher: AESGCM | None = None

    @property
    def _aead(self) -> AESGCM:
        if self._cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._cipher = AESGCM(self._key)
        return self._cipher

    def encrypt(self, plaintext: str, *, context: str) -> str:
        """`context` (e.g. the row's name) is authenticated: a ciphertext moved to another
        row does not decrypt."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return f"{VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, *, context: str) -> str:
        version, _, body = token.partition(".")
        if version != VERSION:
            raise DecryptionFailed(f"Unknown secret format {version!r}")
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.urlsafe_b64decode(body)
            opened = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise DecryptionFailed() from exc
        return opened.decode()
