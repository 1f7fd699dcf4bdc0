"""The production bundle: an immutable, versioned, self-verifying directory a server can load.

Layout of ``<bundle_root>/<version>/``::

    manifest.json        format version, created_at, code/model version, dataset fingerprint,
                         parameters, metrics, fold-in settings, counts, sha256 of every file
    item_factors.npy     float32 [n_items, f]      row i belongs to item_ids[i]
    user_factors.npy     float32 [n_users, f]      row u belongs to user_ids[u]
    item_ids.npy         int64 movie ids
    user_ids.npy         int64 user ids
    seen.npz             CSR users x items: every movie each user has rated (to exclude)
    liked.npz            CSR users x items: the training weights the model was fitted on (for
                         explanations: which liked movie contributed most to a score)
    index.faiss          FAISS index over item factors, ids = movie ids, inner product
    movies.parquet       movie_id, title, year, genres (for every item in the model)
    popularity.json      {"overall": [movie ids], "by_genre": {genre: [movie ids]}}
    bm25_length_norm.npy only with bm25 weighting: per-item BM25 length normalisation
    top_rows.npy         optional, int32 [n_users, n]: each user's n best unseen items (item rows,
                         best first, -1 past the end when fewer are unseen), ranked exactly
    top_scores.npy       optional, float32 [n_users, n]: their ALS scores

Written into a temporary directory and renamed, so a bundle directory is either complete or
absent; every file's hash is checked on load, so a corrupted bundle is refused.
No dagster import here: the serving package loads bundles with this module alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import scipy.sparse as sp

from .confidence import Weighting

FORMAT_VERSION = 2  # 2: liked.npz and fold_in.liked_value
MANIFEST = "manifest.json"


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, corrupted or of an unknown format."""


@dataclass
class Bundle:
    path: Path
    manifest: dict
    item_ids: np.ndarray
    user_ids: np.ndarray
    item_factors: np.ndarray
    user_factors: np.ndarray
    seen: sp.csr_matrix
    liked: sp.csr_matrix
    index: faiss.Index
    movies: pl.DataFrame
    popularity: dict
    length_norm: np.ndarray | None = None
    weighting: Weighting = field(default_factory=Weighting)
    top_rows: np.ndarray | None = None
    top_scores: np.ndarray | None = None

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def regularization(self) -> float:
        return float(self.manifest["fold_in"]["regularization"])


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def popularity_ranking(
    seen: sp.csr_matrix, item_ids: np.ndarray, movies: pl.DataFrame, top: int = 500
) -> dict:
    """Most-rated items overall and per genre, as movie ids."""
    counts = np.asarray((seen > 0).sum(axis=0)).ravel()
    order = np.argsort(-counts, kind="stable")
    overall = item_ids[order]
    genres_of = dict(zip(movies["movie_id"].to_list(), movies["genres"].to_list(), strict=True))
    by_genre: dict[str, list[int]] = {}
    for movie in overall.tolist():
        for genre in genres_of.get(movie) or []:
            ranked = by_genre.setdefault(genre, [])
            if len(ranked) < top:
                ranked.append(movie)
    return {"overall": overall[:top].tolist(), "by_genre": by_genre}


def top_unseen(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    seen: sp.csr_matrix,
    n: int,
    chunk_users: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``n`` highest-scoring unseen items by exact inner product, best first.

    Rows past a user's unseen items are -1 (score -inf). Users are scored in chunks, so memory
    stays at ``chunk_users`` x items floats whatever the number of users.
    """
    n_users, n_items = user_factors.shape[0], item_factors.shape[0]
    n = min(n, n_items)
    rows = np.full((n_users, n), -1, dtype=np.int32)
    scores = np.full((n_users, n), -np.inf, dtype=np.float32)
    if n == 0:
        return rows, scores
    items_t = np.ascontiguousarray(item_factors, dtype=np.float32).T
    seen = seen.tocsr()
    for start in range(0, n_users, chunk_users):
        stop = min(start + chunk_users, n_users)
        block = np.asarray(user_factors[start:stop], dtype=np.float32) @ items_t
        part = seen[start:stop]
        block[np.repeat(np.arange(stop - start), np.diff(part.indptr)), part.indices] = -np.inf
        top = np.argpartition(-block, n - 1, axis=1)[:, :n]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        rows[start:stop] = np.where(np.isfinite(top_scores), top, -1)
        scores[start:stop] = top_scores
    return rows, scores


def write_bundle(
    root: Path,
    *,
    item_ids: np.ndarray,
    user_ids: np.ndarray,
    item_factors: np.ndarray,
    user_factors: np.ndarray,
    seen: sp.csr_matrix,
    liked: sp.csr_matrix,
    index: faiss.Index,
    movies: pl.DataFrame,
    weighting: Weighting,
    regularization: float,
    length_norm: np.ndarray | None,
    manifest: dict,
    top_n: int = 0,
) -> Path:
    """Write a new bundle under ``root`` and return its directory (named by its version).

    With ``top_n`` > 0 each user's best ``top_n`` unseen items are ranked here, once, so a server
    answers a known user's plain request by slicing an array instead of searching the index.
    """
    n_items, n_users = len(item_ids), len(user_ids)
    if item_factors.shape[0] != n_items or user_factors.shape[0] != n_users:
        raise BundleError("factor rows do not match the id maps")
    for name, matrix in (("seen", seen), ("liked", liked)):
        if matrix.shape != (n_users, n_items):
            raise BundleError(f"{name} matrix is {matrix.shape}, expected {(n_users, n_items)}")
    if set(movies.columns) < {"movie_id", "title", "year", "genres"}:
        raise BundleError("movies need movie_id, title, year and genres")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=root))
    try:
        np.save(staging / "item_factors.npy", np.ascontiguousarray(item_factors, dtype=np.float32))
        np.save(staging / "user_factors.npy", np.ascontiguousarray(user_factors, dtype=np.float32))
        np.save(staging / "item_ids.npy", np.asarray(item_ids, dtype=np.int64))
        np.save(staging / "user_ids.npy", np.asarray(user_ids, dtype=np.int64))
        sp.save_npz(staging / "seen.npz", seen.tocsr().astype(np.float32))
        sp.save_npz(staging / "liked.npz", liked.tocsr().astype(np.float32))
        faiss.write_index(index, str(staging / "index.faiss"))
        catalogue = movies.filter(pl.col("movie_id").is_in(np.asarray(item_ids).tolist()))
        catalogue.select("movie_id", "title", "year", "genres").write_parquet(staging / "movies.parquet")
        popularity = popularity_ranking(seen, np.asarray(item_ids), catalogue)
        (staging / "popularity.json").write_text(json.dumps(popularity))
        if weighting.scheme == "bm25":
            if length_norm is None:
                raise BundleError("bm25 weighting needs the items' length normalisation")
            np.save(staging / "bm25_length_norm.npy", np.asarray(length_norm, dtype=np.float32))
        if top_n > 0:
            top_rows, top_scores = top_unseen(user_factors, item_factors, seen, top_n)
            np.save(staging / "top_rows.npy", top_rows)
            np.save(staging / "top_scores.npy", top_scores)
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        described = {
            "files": files,
            "manifest": manifest,
            "weighting": weighting.to_dict(),
            "l2": regularization,
        }
        content = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
        created = datetime.now(UTC)
        version = f"{created:%Y%m%dT%H%M%S}Z-{content[:8]}"
        full = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "version": version,
            "created_at": created.isoformat(timespec="seconds"),
            "fold_in": {
                "regularization": regularization,
                "weighting": weighting.to_dict(),
                # the interaction weight a cold-start "liked" movie gets: the typical training one
                "liked_value": float(np.median(liked.data)) if liked.nnz else 1.0,
            },
            "counts": {"users": n_users, "items": n_items, "factors": int(item_factors.shape[1])},
            "precomputed_top_n": min(top_n, n_items) if top_n > 0 else 0,
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(full, indent=2, default=str) + "\n")
        target = root / version
        if target.exists():
            raise BundleError(f"bundle {target} already exists: bundles are immutable")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_manifest(path: Path) -> dict:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a bundle: no {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    return manifest


def verify_bundle(path: Path) -> dict:
    """Check the format version and every file's hash; returns the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{path}: {name} is missing")
        if _sha256(file) != expected:
            raise BundleError(f"{path}: {name} is corrupted (sha256 differs from the manifest)")
    return manifest


def load_bundle(path: Path) -> Bundle:
    """Load and validate a bundle; raises :class:`BundleError` on anything wrong."""
    path = Path(path)
    manifest = verify_bundle(path)
    weighting = Weighting(**manifest["fold_in"]["weighting"])
    norm_file = path / "bm25_length_norm.npy"
    has_top = (path / "top_rows.npy").is_file()
    bundle = Bundle(
        path=path,
        manifest=manifest,
        item_ids=np.load(path / "item_ids.npy"),
        user_ids=np.load(path / "user_ids.npy"),
        item_factors=np.load(path / "item_factors.npy"),
        user_factors=np.load(path / "user_factors.npy"),
        seen=sp.load_npz(path / "seen.npz").tocsr(),
        liked=sp.load_npz(path / "liked.npz").tocsr(),
        index=faiss.read_index(str(path / "index.faiss")),
        movies=pl.read_parquet(path / "movies.parquet"),
        popularity=json.loads((path / "popularity.json").read_text()),
        length_norm=np.load(norm_file) if norm_file.is_file() else None,
        weighting=weighting,
        top_rows=np.load(path / "top_rows.npy") if has_top else None,
        top_scores=np.load(path / "top_scores.npy") if has_top else None,
    )
    if has_top and bundle.top_rows.shape != bundle.top_scores.shape:
        raise BundleError(f"{path}: top_rows and top_scores differ in shape")
    if has_top and bundle.top_rows.shape[0] != len(bundle.user_ids):
        raise BundleError(
            f"{path}: top_rows has {bundle.top_rows.shape[0]} users, expected {len(bundle.user_ids)}"
        )
    if bundle.index.ntotal != len(bundle.item_ids):
        raise BundleError(
            f"{path}: index holds {bundle.index.ntotal} vectors, expected {len(bundle.item_ids)}"
        )
    return bundle
