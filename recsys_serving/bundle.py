"""The production bundle: an immutable, versioned, self-verifying directory a server can load.

Layout of ``<bundle_root>/<version>/``; ``manifest.json`` names the model kind (``model.kind``:
``als``, ``ease`` or ``item_knn``) and lists every other file with its sha256::

    manifest.json        format version, created_at, model kind and parameters, metrics, dataset
                         fingerprint, fold-in/input settings, counts, sha256 of every file
    item_ids.npy         int64 movie ids (sorted); row i of every item array belongs to item_ids[i]
    user_ids.npy         int64 user ids (sorted)
    seen.npz             CSR users x items: every movie each user has rated (to exclude)
    liked.npz            CSR users x items: each user's positive interactions with their weights,
                         the model's input for that user (scores, explanations)
    movies.parquet       movie_id, title, year, genres (every item in the model, and every cold one)
    popularity.json      {"overall": [movie ids], "by_genre": {genre: [movie ids]}}
    held_out.npz         optional, CSR users x items: the liked pairs the model was not fitted on
                         (its test split); the rest of ``liked`` is what it was fitted on
    top_rows.npy         optional, int32 [n_users, n]: each user's n best unseen items (item rows,
                         best first, -1 past the end when fewer are unseen), ranked exactly
    top_scores.npy       optional, float32 [n_users, n]: their scores
    top_because.npy      with them (format 5): int32 [n_users, n], the liked item that explains
                         each entry as ``explain=true`` does (-1 past the end)
  als only:
    similar_rows.npy     with precomputed lists: int32 [n_items, n], each item's n most similar
    similar_scores.npy   items (cosine of the factors, itself excluded) and their float32 scores
    item_factors.npy     float32 [n_items, f]
    user_factors.npy     float32 [n_users, f]
    index.faiss          FAISS index over item factors, ids = movie ids, inner product
    bm25_length_norm.npy only with bm25 weighting: per-item BM25 length normalisation
  ease and item_knn:
    item_similarity.npz  CSR items x items: row j holds item j's strongest neighbours; a user's
                         scores are (liked row, binary for EASE) @ item_similarity
  optional, movies the model was not trained on ("cold": new releases, movies too rarely rated):
    cold_ids.npy         int64 movie ids (sorted), none of them in item_ids
    content.npy          float32 [n_items + n_cold, d]: unit content vectors (genres, year, tags,
                         genome), the model's items in item order, then the cold ones
    cold_seen.npz        CSR users x cold items: the cold movies each user has rated
    cold_factors.npy     als: float32 [n_cold, f], factors estimated from content
    cold_similarity.npz  ease and item_knn: CSR items x cold items, the similarity columns of cold
                         items (estimated from their nearest warm items in content space)
    cold_top_rows.npy    with precomputed lists: int32 [n_users, 10], each user's best unrated
    cold_top_scores.npy  cold items (cold positions, -1 past the end) and their float32 scores
    cold_similar_rows.npy    with precomputed lists (format 6): int32 [n_cold, n], each cold
    cold_similar_scores.npy  movie's n nearest catalogue movies by content (catalogue rows,
                             itself excluded) and their float32 cosines

Written into a temporary directory and renamed, so a bundle directory is either complete or
absent. The loader reads only files the manifest lists, checks every hash, and refuses a bundle
with a file the manifest does not list, so nothing unverified is ever served.
No dagster import here: the serving package loads bundles with this module alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl
import scipy.sparse as sp

from .confidence import Weighting
from .models import (
    KINDS,
    ColdScorer,
    FactorModel,
    ItemItemModel,
    Model,
    content_neighbours,
    explained_lists,
    top_unseen,
)

# 6: cold movies' content neighbours precomputed; 5: precomputed similar movies (ALS) and
# explanations of the users' lists; 4: optional cold
# items; 3: model kinds (als, ease, item_knn); 2: ALS only
FORMAT_VERSION = 6
READABLE_FORMATS = (2, 3, 4, 5, 6)
MANIFEST = "manifest.json"
COMMON_FILES = ("item_ids.npy", "user_ids.npy", "seen.npz", "liked.npz", "movies.parquet", "popularity.json")
KIND_FILES = {
    "als": ("item_factors.npy", "user_factors.npy", "index.faiss"),
    "ease": ("item_similarity.npz",),
    "item_knn": ("item_similarity.npz",),
}
COLD_FILES = ("cold_ids.npy", "content.npy", "cold_seen.npz")
COLD_LISTS = ("cold_top_rows.npy", "cold_top_scores.npy")
COLD_SIMILAR_LISTS = ("cold_similar_rows.npy", "cold_similar_scores.npy")
COLD_TOP_N = 10  # each user's best cold items ranked at packaging time (more cold slots: computed)
COLD_KIND_FILES = {
    "als": "cold_factors.npy",
    "ease": "cold_similarity.npz",
    "item_knn": "cold_similarity.npz",
}
SIMILAR_LISTS = ("similar_rows.npy", "similar_scores.npy")
OPTIONAL_FILES = (
    "top_rows.npy", "top_scores.npy", "top_because.npy", "bm25_length_norm.npy", "held_out.npz", *SIMILAR_LISTS
)  # fmt: skip
# Ranked lists stored as a rows file and a scores file of one shape, always written together.
LIST_PAIRS = (("top_rows.npy", "top_scores.npy"), SIMILAR_LISTS, COLD_LISTS, COLD_SIMILAR_LISTS)


# Manifest keys write_bundle fills in itself (a bundle made from another's parts drops them).
MANIFEST_GENERATED = (
    "cold_items", "format_version", "version", "created_at", "fold_in", "counts", "precomputed_top_n", "files"
)  # fmt: skip


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, corrupted or of an unknown format."""


@dataclass
class ColdItems:
    """Movies the model does not score, and what scores them: content vectors, and per model kind
    estimated ALS factors or similarity columns (recsys_assets.modeling.content builds them)."""

    movie_ids: np.ndarray  # int64, sorted
    content: np.ndarray  # float32 [n_items + n_cold, d]
    seen: sp.csr_matrix  # users x cold
    factors: np.ndarray | None = None  # als: [n_cold, f]
    similarity: sp.csr_matrix | None = None  # item-item kinds: items x cold
    top_rows: np.ndarray | None = None  # [n_users, COLD_TOP_N] cold positions, -1 past the end
    top_scores: np.ndarray | None = None
    similar_rows: np.ndarray | None = None  # [n_cold, n] catalogue rows nearest in content
    similar_scores: np.ndarray | None = None


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    item_ids: np.ndarray
    user_ids: np.ndarray
    seen: sp.csr_matrix
    liked: sp.csr_matrix
    movies: pl.DataFrame
    popularity: dict[str, Any]
    kind: str = "als"
    item_factors: np.ndarray | None = None
    user_factors: np.ndarray | None = None
    index: faiss.Index | None = None
    item_similarity: sp.csr_matrix | None = None
    held_out: sp.csr_matrix | None = None
    length_norm: np.ndarray | None = None
    weighting: Weighting = field(default_factory=Weighting)
    top_rows: np.ndarray | None = None
    top_scores: np.ndarray | None = None
    top_because: np.ndarray | None = None
    similar_rows: np.ndarray | None = None
    similar_scores: np.ndarray | None = None
    cold: ColdItems | None = None

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def regularization(self) -> float:
        return float(self.manifest["fold_in"]["regularization"])

    def fitted_pairs(self) -> sp.csr_matrix:
        """The (user, item) pairs the model was fitted on: ``liked`` without the held-out ones."""
        if self.held_out is None:
            return self.liked
        return (self.liked - self.liked.multiply(self.held_out > 0)).tocsr()

    @property
    def binary_input(self) -> bool:
        return bool(self.manifest["fold_in"].get("binary_input", False))

    def model(self) -> Model:
        """The bundle's scoring model, whatever its kind."""
        if self.kind == "als":
            if self.item_factors is None or self.user_factors is None or self.index is None:
                raise BundleError(f"{self.path}: an ALS bundle without its factors or index")
            return FactorModel(
                self.item_ids,
                self.item_factors,
                self.user_factors,
                self.index,
                self.weighting,
                self.regularization,
                self.length_norm,
            )
        if self.item_similarity is None:
            raise BundleError(f"{self.path}: a {self.kind} bundle without its item similarity")
        return ItemItemModel(self.kind, self.item_similarity, self.liked, self.binary_input)


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def popularity_order(seen: sp.csr_matrix) -> np.ndarray:
    """Item rows by number of raters, most first, ties to the lower row: the one popularity
    ranking the bundle's popularity.json and the server's fallback share."""
    counts = np.asarray((seen > 0).sum(axis=0)).ravel()
    order: np.ndarray = np.argsort(-counts, kind="stable")
    return order


def popularity_ranking(
    seen: sp.csr_matrix, item_ids: np.ndarray, movies: pl.DataFrame, top: int = 500
) -> dict[str, Any]:
    """Most-rated items overall and per genre, as movie ids."""
    overall = item_ids[popularity_order(seen)]
    genres_of = dict(zip(movies["movie_id"].to_list(), movies["genres"].to_list(), strict=True))
    by_genre: dict[str, list[int]] = {}
    for movie in overall.tolist():
        for genre in genres_of.get(movie) or []:
            ranked = by_genre.setdefault(genre, [])
            if len(ranked) < top:
                ranked.append(movie)
    return {"overall": overall[:top].tolist(), "by_genre": by_genre}


def write_bundle(
    root: Path,
    *,
    kind: str,
    item_ids: np.ndarray,
    user_ids: np.ndarray,
    seen: sp.csr_matrix,
    liked: sp.csr_matrix,
    movies: pl.DataFrame,
    manifest: dict[str, Any],
    item_factors: np.ndarray | None = None,
    user_factors: np.ndarray | None = None,
    index: faiss.Index | None = None,
    weighting: Weighting | None = None,
    regularization: float = 0.0,
    length_norm: np.ndarray | None = None,
    item_similarity: sp.csr_matrix | None = None,
    binary_input: bool = False,
    held_out: sp.csr_matrix | None = None,
    top_n: int = 0,
    cold: ColdItems | None = None,
    top_lists: tuple[np.ndarray, np.ndarray] | None = None,
    top_because: np.ndarray | None = None,
    similar_lists: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write a new bundle of ``kind`` under ``root`` and return its directory (named by its version).

    ALS needs the factors, the index and the fold-in settings (weighting, regularization);
    item-item kinds need ``item_similarity`` and whether their input is binary. With ``top_n`` > 0
    each user's best ``top_n`` unseen items are ranked here, once, so a server answers a known
    user's plain request by slicing an array; for ALS so are each item's ``top_n`` most similar
    items (a dense scan of the catalogue per request otherwise), for every kind the liked movie
    that explains each entry of the users' lists, and with a cold part each user's best cold
    movies and each cold movie's nearest movies by content. ``top_lists``, ``top_because`` and
    ``similar_lists`` reuse lists ranked before (a bundle made from another's parts).
    """
    if kind not in KINDS:
        raise BundleError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")
    n_items, n_users = len(item_ids), len(user_ids)
    for name, matrix in (("seen", seen), ("liked", liked), ("held_out", held_out)):
        if matrix is not None and matrix.shape != (n_users, n_items):
            raise BundleError(f"{name} matrix is {matrix.shape}, expected {(n_users, n_items)}")
    if set(movies.columns) < {"movie_id", "title", "year", "genres"}:
        raise BundleError("movies need movie_id, title, year and genres")
    weighting = weighting or Weighting()
    if kind == "als":
        if item_factors is None or user_factors is None or index is None:
            raise BundleError("an ALS bundle needs item factors, user factors and an index")
        if item_factors.shape[0] != n_items or user_factors.shape[0] != n_users:
            raise BundleError("factor rows do not match the id maps")
        if weighting.scheme == "bm25" and length_norm is None:
            raise BundleError("bm25 weighting needs the items' length normalisation")
    elif item_similarity is None or item_similarity.shape != (n_items, n_items):
        raise BundleError(f"a {kind} bundle needs an items x items similarity matrix ({n_items} items)")
    if cold is not None:
        _check_cold(cold, kind, n_users, n_items)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=root))
    try:
        np.save(staging / "item_ids.npy", np.asarray(item_ids, dtype=np.int64))
        np.save(staging / "user_ids.npy", np.asarray(user_ids, dtype=np.int64))
        sp.save_npz(staging / "seen.npz", seen.tocsr().astype(np.float32))
        sp.save_npz(staging / "liked.npz", liked.tocsr().astype(np.float32))
        if held_out is not None:
            sp.save_npz(staging / "held_out.npz", held_out.tocsr().astype(np.float32))
        listed = np.asarray(item_ids).tolist() + ([] if cold is None else cold.movie_ids.tolist())
        catalogue = movies.filter(pl.col("movie_id").is_in(listed))
        catalogue.select("movie_id", "title", "year", "genres").write_parquet(staging / "movies.parquet")
        popularity = popularity_ranking(seen, np.asarray(item_ids), catalogue)
        if cold is not None:
            _write_cold(staging, cold)
        (staging / "popularity.json").write_text(json.dumps(popularity))
        if kind == "als":
            assert (
                item_factors is not None and user_factors is not None and index is not None
            )  # checked above
            np.save(staging / "item_factors.npy", np.ascontiguousarray(item_factors, dtype=np.float32))
            np.save(staging / "user_factors.npy", np.ascontiguousarray(user_factors, dtype=np.float32))
            faiss.write_index(index, str(staging / "index.faiss"))
            if weighting.scheme == "bm25":
                np.save(staging / "bm25_length_norm.npy", np.asarray(length_norm, dtype=np.float32))
            model: Model = FactorModel(
                np.asarray(item_ids),
                item_factors,
                user_factors,
                index,
                weighting,
                regularization,
                length_norm,
            )
        else:
            assert item_similarity is not None  # checked above
            similarity = item_similarity.tocsr().astype(np.float32)
            sp.save_npz(staging / "item_similarity.npz", similarity)
            model = ItemItemModel(kind, similarity, liked, binary_input)
        if top_lists is not None:
            top_rows, top_scores = top_lists
            top_n = top_rows.shape[1]
        elif top_n > 0:
            top_rows, top_scores = top_unseen(model, n_users, n_items, seen, top_n)
        if top_n > 0:
            np.save(staging / "top_rows.npy", top_rows)
            np.save(staging / "top_scores.npy", top_scores)
            if top_because is None:
                top_because = explained_lists(model, top_rows, liked.tocsr().astype(np.float32))
            np.save(staging / "top_because.npy", top_because)
            if isinstance(model, FactorModel):  # item-item kinds read a sparse row: nothing to save
                similar_rows, similar_scores = similar_lists or model.similar_lists(top_n)
                np.save(staging / "similar_rows.npy", similar_rows)
                np.save(staging / "similar_scores.npy", similar_scores)
            if cold is not None:
                scorer = ColdScorer(model, cold.factors, cold.similarity)
                cold_rows, cold_scores = top_unseen(
                    scorer, n_users, len(cold.movie_ids), cold.seen, COLD_TOP_N
                )
                np.save(staging / "cold_top_rows.npy", cold_rows)
                np.save(staging / "cold_top_scores.npy", cold_scores)
                # Always ranked afresh: a catalogue refresh changes the movies to rank among.
                near_rows, near_scores = content_neighbours(cold.content, n_items, top_n)
                np.save(staging / "cold_similar_rows.npy", near_rows)
                np.save(staging / "cold_similar_scores.npy", near_scores)
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        fold = {
            "regularization": regularization,
            "weighting": weighting.to_dict(),
            "binary_input": binary_input,
            # the interaction weight a cold-start "liked" movie gets: the typical training one
            "liked_value": float(np.median(liked.data)) if liked.nnz else 1.0,
        }
        described = {"files": files, "manifest": manifest, "kind": kind, "fold_in": fold}
        content = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
        created = datetime.now(UTC)
        version = f"{created:%Y%m%dT%H%M%S}Z-{content[:8]}"
        factors = int(item_factors.shape[1]) if item_factors is not None else None
        full = {
            **manifest,
            "cold_items": 0 if cold is None else len(cold.movie_ids),
            "model": {**manifest.get("model", {}), "kind": kind},
            "format_version": FORMAT_VERSION,
            "version": version,
            "created_at": created.isoformat(timespec="seconds"),
            "fold_in": fold,
            "counts": {"users": n_users, "items": n_items, "factors": factors},
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


def _check_cold(cold: ColdItems, kind: str, n_users: int, n_items: int) -> None:
    n_cold = len(cold.movie_ids)
    if cold.content.shape[0] != n_items + n_cold:
        raise BundleError(f"cold content has {cold.content.shape[0]} rows, expected {n_items + n_cold}")
    if cold.seen.shape != (n_users, n_cold):
        raise BundleError(f"cold seen is {cold.seen.shape}, expected {(n_users, n_cold)}")
    if kind == "als" and (cold.factors is None or cold.factors.shape[0] != n_cold):
        raise BundleError(f"an ALS bundle's cold items need estimated factors for {n_cold} items")
    if kind != "als" and (cold.similarity is None or cold.similarity.shape != (n_items, n_cold)):
        raise BundleError(f"a {kind} bundle's cold items need an items x cold similarity ({n_cold} cold)")
    for name, lists, expected in (
        ("cold_top_rows", cold.top_rows, n_users),
        ("cold_top_scores", cold.top_scores, n_users),
        ("cold_similar_rows", cold.similar_rows, n_cold),
        ("cold_similar_scores", cold.similar_scores, n_cold),
    ):
        if lists is not None and lists.shape[0] != expected:
            raise BundleError(f"{name} has {lists.shape[0]} rows, expected {expected}")
    near, near_scores = cold.similar_rows, cold.similar_scores
    if near is not None and near_scores is not None and near.shape != near_scores.shape:
        raise BundleError("cold_similar_rows and cold_similar_scores differ in shape")


def _write_cold(staging: Path, cold: ColdItems) -> None:
    np.save(staging / "cold_ids.npy", np.asarray(cold.movie_ids, dtype=np.int64))
    np.save(staging / "content.npy", np.ascontiguousarray(cold.content, dtype=np.float32))
    sp.save_npz(staging / "cold_seen.npz", cold.seen.tocsr().astype(np.float32))
    if cold.factors is not None:
        np.save(staging / "cold_factors.npy", np.ascontiguousarray(cold.factors, dtype=np.float32))
    if cold.similarity is not None:
        sp.save_npz(staging / "cold_similarity.npz", cold.similarity.tocsr().astype(np.float32))


def _read_cold(path: Path, listed: dict[str, str]) -> ColdItems | None:
    if "cold_ids.npy" not in listed:
        return None
    return ColdItems(
        movie_ids=np.load(path / "cold_ids.npy"),
        content=np.load(path / "content.npy"),
        seen=sp.load_npz(path / "cold_seen.npz").tocsr(),
        factors=np.load(path / "cold_factors.npy") if "cold_factors.npy" in listed else None,
        similarity=(
            sp.load_npz(path / "cold_similarity.npz").tocsr() if "cold_similarity.npz" in listed else None
        ),
        top_rows=np.load(path / "cold_top_rows.npy") if "cold_top_rows.npy" in listed else None,
        top_scores=np.load(path / "cold_top_scores.npy") if "cold_top_scores.npy" in listed else None,
        similar_rows=np.load(path / "cold_similar_rows.npy") if "cold_similar_rows.npy" in listed else None,
        similar_scores=(
            np.load(path / "cold_similar_scores.npy") if "cold_similar_scores.npy" in listed else None
        ),
    )


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a bundle: no {MANIFEST}")
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    if manifest.get("format_version") not in READABLE_FORMATS:
        raise BundleError(
            f"{path}: bundle format {manifest.get('format_version')!r}, this code reads {READABLE_FORMATS}"
        )
    return manifest


def manifest_kind(manifest: dict[str, Any]) -> str:
    return str(manifest.get("model", {}).get("kind", "als"))


def verify_bundle(path: Path) -> dict[str, Any]:
    """Check the format, that the manifest lists exactly the files present and every file the
    bundle's kind needs, and every file's hash; returns the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    kind = manifest_kind(manifest)
    if kind not in KINDS:
        raise BundleError(f"{path}: unknown model kind {kind!r}")
    listed = manifest.get("files") or {}
    present = {p.name for p in path.iterdir() if p.name != MANIFEST}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise BundleError(f"{path}: {', '.join(unlisted)} not listed in the manifest (refused unverified)")
    allowed = (
        set(COMMON_FILES)
        | set(KIND_FILES[kind])
        | set(OPTIONAL_FILES)
        | set(COLD_FILES)
        | set(COLD_LISTS)
        | set(COLD_SIMILAR_LISTS)
    )
    allowed.add(COLD_KIND_FILES[kind])
    unexpected = sorted(set(listed) - allowed)
    if unexpected:
        raise BundleError(f"{path}: unexpected files for a {kind} bundle: {', '.join(unexpected)}")
    needed = set(COMMON_FILES) | set(KIND_FILES[kind])
    weighting = manifest.get("fold_in", {}).get("weighting", {})
    if kind == "als" and weighting.get("scheme") == "bm25":
        needed.add("bm25_length_norm.npy")
    missing = sorted((needed - set(listed)) | {n for n in listed if not (path / n).is_file()})
    if missing:
        raise BundleError(f"{path}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    for rows, scores in LIST_PAIRS:
        if (rows in listed) != (scores in listed):
            raise BundleError(f"{path}: {rows} and {scores} come together")
    if "top_because.npy" in listed and "top_rows.npy" not in listed:
        raise BundleError(f"{path}: top_because.npy explains top_rows.npy, which is missing")
    cold = {*COLD_FILES, COLD_KIND_FILES[kind]}
    if (cold | set(COLD_LISTS) | set(COLD_SIMILAR_LISTS)) & set(listed) and not cold <= set(listed):
        raise BundleError(f"{path}: cold items need all of {', '.join(sorted(cold))}")
    for name, expected in listed.items():
        if _sha256(path / name) != expected:
            raise BundleError(f"{path}: {name} is corrupted (sha256 differs from the manifest)")
    return manifest


def load_bundle(path: Path) -> Bundle:
    """Load and validate a bundle; raises :class:`BundleError` on anything wrong."""
    path = Path(path)
    manifest = verify_bundle(path)
    listed = manifest["files"]
    kind = manifest_kind(manifest)

    def optional(name: str, read: Callable[[Path], Any] = np.load) -> Any:
        return read(path / name) if name in listed else None

    bundle = Bundle(
        path=path,
        manifest=manifest,
        item_ids=np.load(path / "item_ids.npy"),
        user_ids=np.load(path / "user_ids.npy"),
        seen=sp.load_npz(path / "seen.npz").tocsr(),
        liked=sp.load_npz(path / "liked.npz").tocsr(),
        movies=pl.read_parquet(path / "movies.parquet"),
        popularity=json.loads((path / "popularity.json").read_text()),
        kind=kind,
        item_factors=optional("item_factors.npy"),
        user_factors=optional("user_factors.npy"),
        index=optional("index.faiss", lambda p: faiss.read_index(str(p))),
        item_similarity=optional("item_similarity.npz", lambda p: sp.load_npz(p).tocsr()),
        held_out=optional("held_out.npz", lambda p: sp.load_npz(p).tocsr()),
        length_norm=optional("bm25_length_norm.npy"),
        weighting=Weighting(**manifest["fold_in"]["weighting"]),
        top_rows=optional("top_rows.npy"),
        top_scores=optional("top_scores.npy"),
        top_because=optional("top_because.npy"),
        similar_rows=optional("similar_rows.npy"),
        similar_scores=optional("similar_scores.npy"),
        cold=_read_cold(path, listed),
    )
    n_users, n_items = len(bundle.user_ids), len(bundle.item_ids)
    for name, rows, scores, expected in (
        ("top", bundle.top_rows, bundle.top_scores, n_users),
        ("similar", bundle.similar_rows, bundle.similar_scores, n_items),
    ):
        if rows is None or scores is None:
            continue
        if rows.shape != scores.shape:
            raise BundleError(f"{path}: {name}_rows and {name}_scores differ in shape")
        if rows.shape[0] != expected:
            raise BundleError(f"{path}: {name}_rows has {rows.shape[0]} rows, expected {expected}")
    top_shape = None if bundle.top_rows is None else bundle.top_rows.shape
    if bundle.top_because is not None and bundle.top_because.shape != top_shape:
        raise BundleError(f"{path}: top_because and top_rows differ in shape")
    if bundle.index is not None and bundle.index.ntotal != n_items:
        raise BundleError(f"{path}: index holds {bundle.index.ntotal} vectors, expected {n_items}")
    if bundle.item_similarity is not None and bundle.item_similarity.shape != (n_items, n_items):
        raise BundleError(f"{path}: item_similarity is {bundle.item_similarity.shape}, expected {n_items}^2")
    if bundle.cold is not None:
        try:
            _check_cold(bundle.cold, kind, n_users, n_items)
        except BundleError as exc:
            raise BundleError(f"{path}: {exc}") from None
    return bundle
