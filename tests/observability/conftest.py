from __future__ import annotations

# The multi-process metrics test runs real processes like the scaled-shape suite.
from tests.scale.conftest import cluster, user_key

__all__ = ["cluster", "user_key"]
