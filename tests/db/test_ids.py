"""Row ids are random version-4 UUIDs in 32 hex digits."""

from __future__ import annotations

import uuid

from chatplane.db.base import new_id


def test_ids_are_distinct_version_4_uuids_in_hex() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert parsed.hex == value
