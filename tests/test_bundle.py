"""The production bundle: round trip, immutability, tamper detection, no dagster needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recsys_assets.modeling.index import build_index
from recsys_serving.bundle import BundleError, load_bundle, verify_bundle, write_bundle
from recsys_serving.confidence import Weighting
from recsys_serving.models import ItemItemModel, top_unseen

BM25 = Weighting("bm25")


def _write(root: Path, weighting: Weighting = BM25) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    item_ids = np.array([3, 10, 42, 77, 90], dtype=np.int64)
    user_ids = np.array([1, 2, 5], dtype=np.int64)
    items = rng.normal(size=(5, 4)).astype(np.float32)
    users = rng.normal(size=(3, 4)).astype(np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=np.float32))
    movies = pl.DataFrame(
        {
            "movie_id": [3, 10, 42, 77, 90, 999],
            "title": ["A", "B", "C", "D", "E", "not in model"],
            "year": [1990, 1991, None, 1993, 1994, 2000],
            "genres": [["Drama"], ["Comedy", "Drama"], [], ["Comedy"], ["Drama"], ["Horror"]],
        },
        schema_overrides={"movie_id": pl.Int32, "year": pl.Int16},
    )
    path = write_bundle(
        root,
        kind="als",
        item_ids=item_ids,
        user_ids=user_ids,
        item_factors=items,
        user_factors=users,
        seen=seen,
        liked=seen * 2.0,
        index=build_index(items, item_ids),
        movies=movies,
        weighting=weighting,
        regularization=0.1,
        length_norm=np.ones(5, dtype=np.float32) if weighting.scheme == "bm25" else None,
        manifest={"model": {"params": {"factors": 4}}, "metrics": {"als": {"ndcg@10": 0.1}}},
    )
    return path, {"items": items, "users": users, "item_ids": item_ids, "seen": seen}


def test_round_trip_gives_the_same_recommendations(tmp_path: Path) -> None:
    path, original = _write(tmp_path)
    bundle = load_bundle(path)
    assert bundle.version == path.name and bundle.manifest["counts"] == {
        "users": 3,
        "items": 5,
        "factors": 4,
    }
    np.testing.assert_array_equal(bundle.item_factors, original["items"])
    _, found = bundle.index.search(bundle.user_factors, 5)
    expected = original["item_ids"][np.argsort(-(original["users"] @ original["items"].T), axis=1)]
    np.testing.assert_array_equal(found, expected)
    assert (bundle.seen != original["seen"]).nnz == 0
    assert bundle.liked.sum() == 2 * original["seen"].sum()
    assert bundle.manifest["fold_in"]["liked_value"] == 2.0
    assert bundle.movies["movie_id"].to_list() == [3, 10, 42, 77, 90]  # only the catalogue
    assert bundle.popularity["overall"][:2] == [3, 10]  # 2 ratings each, stable order
    assert bundle.popularity["by_genre"]["Comedy"] == [10, 77]
    assert bundle.weighting == Weighting("bm25") and bundle.regularization == 0.1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging left behind"


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    factors = np.load(path / "item_factors.npy")
    factors[0, 0] += 1.0
    np.save(path / "item_factors.npy", factors)
    with pytest.raises(BundleError, match="item_factors.npy is corrupted"):
        load_bundle(path)


def test_missing_file_and_unknown_format_are_refused(tmp_path: Path) -> None:
    path, _ = _write(tmp_path)
    (path / "seen.npz").unlink()
    with pytest.raises(BundleError, match="seen.npz is missing"):
        verify_bundle(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bundle format 99"):
        load_bundle(path)
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)


def test_each_bundle_is_a_new_version(tmp_path: Path) -> None:
    first, _ = _write(tmp_path, Weighting("log", alpha=2.0))
    second, _ = _write(tmp_path, Weighting("linear"))
    assert first != second and first.is_dir() and second.is_dir()
    assert not (first / "bm25_length_norm.npy").exists()


class _Dense:
    def __init__(self, scores: np.ndarray):
        self.all = scores

    def user_scores(self, start: int, stop: int) -> np.ndarray:
        return self.all[start:stop]


def test_top_unseen_ranks_exactly_and_pads_short_lists() -> None:
    rng = np.random.default_rng(1)
    users, items = rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
    seen = sp.random(7, 5, density=0.4, format="csr", random_state=2)
    all_scores = users @ items.T
    all_scores[0, [1, 3]] = all_scores[0, 0]  # a tie: the lower row comes first
    rows, scores = top_unseen(_Dense(all_scores), 7, 5, seen, n=4, chunk_users=3)  # chunks split the users
    assert rows.shape == scores.shape == (7, 4)
    for u in range(7):
        exact = all_scores[u].copy()
        exact[seen[u].indices] = -np.inf
        unseen = int(np.isfinite(exact).sum())
        order = np.lexsort((np.arange(5), -exact))[: min(4, unseen)]
        assert rows[u, : len(order)].tolist() == order.tolist()
        np.testing.assert_allclose(scores[u, : len(order)], exact[order], rtol=1e-5, atol=1e-6)
        assert (rows[u, len(order) :] == -1).all()
    assert (rows == -1).any()  # some user has fewer than 4 unseen items: the case is exercised


def _write_item_item(root: Path, kind: str = "ease") -> Path:
    item_ids = np.array([3, 10, 42, 77, 90], dtype=np.int64)
    user_ids = np.array([1, 2, 5], dtype=np.int64)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=np.float32))
    similarity = sp.csr_matrix(np.random.default_rng(2).normal(size=(5, 5)).astype(np.float32))
    movies = pl.DataFrame(
        {"movie_id": item_ids, "title": list("ABCDE"), "year": [None] * 5, "genres": [["Drama"]] * 5},
        schema_overrides={"year": pl.Int16},
    )
    return write_bundle(
        root,
        kind=kind,
        item_ids=item_ids,
        user_ids=user_ids,
        seen=seen,
        liked=seen * 3.0,
        movies=movies,
        manifest={},
        item_similarity=similarity,
        binary_input=kind == "ease",
        top_n=3,
    )


@pytest.mark.parametrize("kind", ["ease", "item_knn"])
def test_item_item_bundle_round_trip(tmp_path: Path, kind: str) -> None:
    bundle = load_bundle(_write_item_item(tmp_path, kind))
    assert bundle.kind == kind == bundle.manifest["model"]["kind"]
    assert (
        bundle.item_factors is None and bundle.index is None and bundle.manifest["counts"]["factors"] is None
    )
    assert not (bundle.path / "index.faiss").exists()
    model = bundle.model()
    assert isinstance(model, ItemItemModel) and model.binary_input == (kind == "ease")
    inputs = bundle.liked.toarray()
    if kind == "ease":
        inputs = (inputs > 0).astype(np.float32)
    expected = inputs @ bundle.item_similarity.toarray()
    np.testing.assert_allclose(model.user_scores(0, 3), expected, rtol=1e-5)
    for u in range(3):
        row = expected[u].copy()
        row[bundle.seen[u].indices] = -np.inf
        order = np.lexsort((np.arange(5), -row))[: min(3, int(np.isfinite(row).sum()))]
        assert bundle.top_rows[u, : len(order)].tolist() == order.tolist()


def test_files_the_manifest_does_not_list_are_refused(tmp_path: Path) -> None:
    """Every file the loader reads is listed and hash-checked: an extra one, even of a name the
    loader knows, is an error rather than being served unverified."""
    path = _write_item_item(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    np.save(path / "bm25_length_norm.npy", np.ones(5, dtype=np.float32))
    with pytest.raises(BundleError, match="bm25_length_norm.npy not listed in the manifest"):
        load_bundle(path)
    (path / "bm25_length_norm.npy").unlink()
    # A listed optional file is verified like the others.
    np.save(path / "top_scores.npy", np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(BundleError, match="top_scores.npy is corrupted"):
        load_bundle(path)
    # A file the kind does not use, even listed, is refused.
    (path / "item_factors.npy").write_bytes(b"x")
    manifest["files"]["item_factors.npy"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unexpected files for a ease bundle: item_factors.npy"):
        load_bundle(path)


def _relist(path: Path, changes: dict[str, np.ndarray | None]) -> None:
    """Rewrite (or drop, for None) files of a bundle and list them with their real hashes, as a
    faulty writer would: only the loader's consistency checks can catch what follows."""
    manifest = json.loads((path / "manifest.json").read_text())
    for name, array in changes.items():
        if array is None:
            (path / name).unlink()
            del manifest["files"][name]
        else:
            np.save(path / name, array)
            manifest["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_precomputed_lists_must_match_their_explanations(tmp_path: Path) -> None:
    path = _write_item_item(tmp_path)
    bundle = load_bundle(path)
    assert bundle.top_because is not None and bundle.top_because.shape == bundle.top_rows.shape
    _relist(path, {"top_because.npy": bundle.top_because[:, :-1]})
    with pytest.raises(BundleError, match="top_because and top_rows differ in shape"):
        load_bundle(path)
    _relist(path, {"top_rows.npy": None, "top_scores.npy": None})
    with pytest.raises(BundleError, match="top_because.npy explains top_rows.npy, which is missing"):
        load_bundle(path)
    _relist(path, {"top_rows.npy": bundle.top_rows})
    with pytest.raises(BundleError, match="top_rows.npy and top_scores.npy come together"):
        load_bundle(path)
