"""The in-process vector search: binary codes, candidate selection and exact rescoring.

Plain numpy, no database: the retriever suite (test_index) runs the same searches through
the database on both shapes, with and without binary codes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from chatplane.knowledge.vectors import (
    KbMatrix,
    binary_codes,
    rescored,
    with_binary_codes,
)

DIM = 96


def unit(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(
    rng: np.random.Generator, rows: int, clusters: int, noise: float, dim: int = DIM
) -> npt.NDArray[np.float32]:
    """Unit rows around `clusters` random centres, sharing a common offset like the
    vectors of one embedding model do (none of them is centred on zero)."""
    offset = rng.standard_normal(dim).astype(np.float32)
    centres = unit(rng.standard_normal((clusters, dim)).astype(np.float32) + offset)
    picks = rng.integers(0, clusters, rows)
    spread = noise / np.sqrt(dim)  # `noise` is the length of the noise vector
    return unit(centres[picks] + spread * rng.standard_normal((rows, dim)).astype(np.float32))


def matrix_of(vectors: npt.NDArray[np.float32], documents: list[str] | None = None) -> KbMatrix:
    names = documents if documents is not None else ["doc"] * len(vectors)
    codes: dict[str, int] = {}
    document_codes = np.array([codes.setdefault(n, len(codes)) for n in names], np.int32)
    chunk_ids = np.arange(1, len(vectors) + 1, dtype=np.int64) * 3  # ids are not row numbers
    return KbMatrix("v1", chunk_ids, document_codes, codes, vectors)


def test_codes_are_the_signs_around_the_centre_packed_in_words() -> None:
    rows = np.array([[1.0, -1.0, 0.5] + [0.0] * 67, [-1.0] * 70], dtype=np.float32)
    centre = np.zeros(70, dtype=np.float32)
    centre[2] = 0.6  # 0.5 is below it
    codes = binary_codes(rows, centre)
    assert codes.shape == (2, 2)  # 70 bits take two 64-bit words
    assert codes.dtype == np.uint64
    bits = np.unpackbits(codes.view(np.uint8), axis=1)[:, :70]
    assert bits[0].tolist() == [1, 0, 0] + [0] * 67
    assert bits[1].tolist() == [0] * 70
    assert not np.unpackbits(codes.view(np.uint8), axis=1)[:, 70:].any()  # padding stays 0


def test_small_matrices_stay_exact_and_big_ones_get_codes() -> None:
    rng = np.random.default_rng(1)
    matrix = matrix_of(clustered(rng, 500, 10, 0.3))
    assert with_binary_codes(matrix, 501).codes is None
    coded = with_binary_codes(matrix, 500)
    assert coded.codes is not None
    assert coded.centre is not None
    np.testing.assert_allclose(coded.centre, matrix.matrix.mean(axis=0), atol=1e-6)
    assert coded.nbytes == matrix.nbytes + coded.codes.nbytes
    assert coded.cells < matrix.cells


def test_the_candidates_are_the_rows_nearest_by_code_ranked_by_cosine() -> None:
    """Checked against an independent count of differing signs."""
    rng = np.random.default_rng(2)
    matrix = with_binary_codes(matrix_of(clustered(rng, 4000, 40, 0.4)), 1)
    assert matrix.centre is not None
    signs = matrix.matrix > matrix.centre
    for query in clustered(rng, 10, 40, 0.4):
        ids, scores = matrix.top(query, 10, None, candidates=50)
        differing = (signs != (query > matrix.centre)).sum(axis=1)
        # The 50 nearest by code (ties at the 50th distance may go either way).
        cutoff = np.sort(differing)[49]
        sure = np.flatnonzero(differing < cutoff)
        possible = np.flatnonzero(differing <= cutoff)
        found_rows = np.searchsorted(matrix.chunk_ids, ids)
        assert len(ids) == 10
        assert set(found_rows.tolist()) <= set(possible.tolist())
        # A sure candidate with a better cosine than the last result is among the results.
        better = sure[matrix.matrix[sure] @ query > scores[-1] + 1e-6]
        assert set(better.tolist()) <= set(found_rows.tolist())
        np.testing.assert_allclose(scores, matrix.matrix[found_rows] @ query, rtol=1e-5)
        assert list(scores) == sorted(scores, reverse=True)


def test_binary_search_finds_the_exact_neighbours_of_clustered_vectors() -> None:
    rng = np.random.default_rng(3)
    """Like the vectors of one text embedding model: 384 dimensions, clustered, with the
    queries near the same clusters as the rows."""
    everything = clustered(rng, 30_040, 300, 1.0, dim=384)
    vectors, queries = everything[:30_000], everything[30_000:]
    exact, coded = matrix_of(vectors), with_binary_codes(matrix_of(vectors), 1)
    recalls = []
    for query in queries:
        want, _ = exact.top(query, 20, None)
        got, scores = coded.top(query, 20, None)
        assert len(got) == 20
        # Scores are exact cosines, best first, whatever the candidates were.
        rows = np.searchsorted(coded.chunk_ids, got)
        np.testing.assert_allclose(scores, vectors[rows] @ query, rtol=1e-5)
        assert list(scores) == sorted(scores, reverse=True)
        recalls.append(len(set(want.tolist()) & set(got.tolist())) / 20)
    assert np.mean(recalls) >= 0.98
    # With every row a candidate, the lists are the exact ones.
    for query in queries[:5]:
        got, _ = coded.top(query, 20, None, candidates=len(vectors))
        assert got.tolist() == exact.top(query, 20, None)[0].tolist()


@pytest.mark.parametrize("far_rows", [30, 3000])
def test_a_document_filter_applies_before_the_candidates_are_chosen(far_rows: int) -> None:
    """Rows of other documents nearer the query never take the candidate slots: a filtered
    search returns `k` rows of the wanted document, the same as exact search."""
    rng = np.random.default_rng(4)
    near = clustered(rng, 20_000, 1, 0.2)
    far = unit(-near[:far_rows] + 0.5 * rng.standard_normal((far_rows, DIM)).astype(np.float32))
    documents = ["near"] * len(near) + ["far"] * far_rows
    vectors = np.concatenate([near, far])
    exact = matrix_of(vectors, documents)
    coded = with_binary_codes(matrix_of(vectors, documents), 1)
    query = near[0]
    got, _ = coded.top(query, 20, ["far"], candidates=100)
    assert len(got) == 20
    rows = np.searchsorted(coded.chunk_ids, got)
    assert all(documents[row] == "far" for row in rows)
    if far_rows <= 100:  # every row of the document is a candidate: exactly the exact list
        assert got.tolist() == exact.top(query, 20, ["far"])[0].tolist()
    assert coded.top(query, 20, ["missing"])[0].tolist() == []
    assert len(coded.top(query, 5, ["far", "near"])[0]) == 5


def test_rescoring_grows_with_the_results_wanted() -> None:
    assert rescored(1) == rescored(5) >= 1000
    assert rescored(200) == 200 * rescored(200) // 200 >= 200 * 10
