"""Content vectors for every movie, from what MovieLens describes it with: genres, release year,
user tags (TF-IDF) and, where the release has it, the tag genome.

Each block is L2-normalised on its own and scaled by the square root of its weight, and the whole
vector is normalised again, so the inner product of two movies is the weighted mean of their
per-block cosines over the blocks both have: genres count whatever the tags say, and a movie
without tags is compared on genres and year alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

# Release years are spread over decade centres (1905, 1915, ...) by linear interpolation, so 1999
# and 2001 are close and 1950 and 2010 are not.
DECADE_CENTRES = np.arange(1905, 2036, 10)


@dataclass(frozen=True)
class ContentRules:
    genre_weight: float = 1.0
    year_weight: float = 0.5
    tag_weight: float = 1.0
    genome_weight: float = 1.0
    tag_dimensions: int = 64  # TF-IDF columns beyond this are reduced by truncated SVD (LSA)
    min_tag_movies: int = 2  # a tag counts once it is on this many movies
    genome_dimensions: int = 32

    def __post_init__(self) -> None:
        for name in ("genre_weight", "year_weight", "tag_weight", "genome_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"content {name} must be >= 0, got {getattr(self, name)}")
        if self.tag_dimensions < 1 or self.genome_dimensions < 1 or self.min_tag_movies < 1:
            raise ValueError("content tag_dimensions, genome_dimensions and min_tag_movies must be >= 1")


@dataclass
class ContentVectors:
    movie_ids: np.ndarray  # int64, sorted
    vectors: np.ndarray  # float32 [movies, dims], unit rows (zero for a movie with nothing known)
    blocks: dict[str, tuple[int, int]]  # block name -> column range
    coverage: dict[str, int]  # block name -> movies that have it

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "movie_id": self.movie_ids,
                "content": pl.Series(self.vectors, dtype=pl.Array(pl.Float32, self.vectors.shape[1])),
            }
        )

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> ContentVectors:
        vectors = frame["content"].to_numpy().astype(np.float32, copy=False)
        return cls(frame["movie_id"].to_numpy().astype(np.int64), np.ascontiguousarray(vectors), {}, {})

    def rows_of(self, movie_ids: np.ndarray) -> np.ndarray:
        """Content rows of ``movie_ids`` (all must be present)."""
        rows = np.searchsorted(self.movie_ids, movie_ids)
        rows = np.minimum(rows, len(self.movie_ids) - 1)
        missing = self.movie_ids[rows] != movie_ids
        if missing.any():
            raise KeyError(f"no content vector for movie(s) {np.asarray(movie_ids)[missing][:5].tolist()}")
        return rows


def _unit_rows(block: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return np.divide(block, norms, out=np.zeros_like(block), where=norms > 0)


def genre_block(genres: list[list[str] | None]) -> tuple[np.ndarray, list[str]]:
    names = sorted({g for row in genres for g in row or []})
    column = {g: i for i, g in enumerate(names)}
    block = np.zeros((len(genres), len(names)), dtype=np.float32)
    for row, listed in enumerate(genres):
        for g in listed or []:
            block[row, column[g]] = 1.0
    return block, names


def year_block(years: np.ndarray) -> np.ndarray:
    """Each year as weights on the two nearest decade centres; unknown years are zero rows."""
    block = np.zeros((len(years), len(DECADE_CENTRES)), dtype=np.float32)
    known = ~np.isnan(years)
    clipped = np.clip(years[known], DECADE_CENTRES[0], DECADE_CENTRES[-1])
    position = (clipped - DECADE_CENTRES[0]) / 10.0
    low = np.minimum(np.floor(position).astype(int), len(DECADE_CENTRES) - 2)
    upper = position - low
    rows = np.flatnonzero(known)
    block[rows, low] = 1.0 - upper
    block[rows, low + 1] = upper
    return block


def _reduce(matrix, dimensions: int):
    """Truncated SVD down to ``dimensions`` columns when there are more (seeded: same data, same
    vectors); the matrix as it is otherwise."""
    if matrix.shape[1] <= dimensions or matrix.shape[0] <= dimensions:
        return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    return TruncatedSVD(n_components=dimensions, random_state=0).fit_transform(matrix)


def tag_block(movie_ids: np.ndarray, tags: pl.DataFrame, rules: ContentRules) -> np.ndarray:
    """TF-IDF over each movie's user tags (lower-cased, each application one term; sublinear tf),
    reduced by LSA when the vocabulary is wider than ``tag_dimensions``."""
    if tags.is_empty():
        return np.zeros((len(movie_ids), 0), dtype=np.float32)
    documents = (
        tags.select("movie_id", pl.col("tag").str.to_lowercase().str.strip_chars())
        .filter(pl.col("tag") != "")
        .group_by("movie_id")
        .agg("tag")
    )
    by_movie = dict(zip(documents["movie_id"].to_list(), documents["tag"].to_list(), strict=True))
    corpus = [by_movie.get(int(m), []) for m in movie_ids]
    tagged = sum(bool(doc) for doc in corpus)
    if tagged < rules.min_tag_movies:
        return np.zeros((len(movie_ids), 0), dtype=np.float32)
    vectorizer = TfidfVectorizer(analyzer=_terms, min_df=rules.min_tag_movies, sublinear_tf=True)
    try:
        matrix = vectorizer.fit_transform(corpus)
    except ValueError:  # no tag is on min_tag_movies movies
        return np.zeros((len(movie_ids), 0), dtype=np.float32)
    return _reduce(matrix, rules.tag_dimensions).astype(np.float32)


def _terms(document: list[str]) -> list[str]:
    return document


def genome_block(movie_ids: np.ndarray, genome: pl.DataFrame, rules: ContentRules) -> np.ndarray:
    """Tag-genome relevance (movies x tags), centred and reduced to ``genome_dimensions``; zero
    rows for movies the genome does not cover."""
    if genome.is_empty():
        return np.zeros((len(movie_ids), 0), dtype=np.float32)
    wide = genome.pivot(on="tag", index="movie_id", values="relevance").sort("movie_id")
    covered = wide["movie_id"].to_numpy().astype(np.int64)
    values = wide.drop("movie_id").fill_null(0.0).to_numpy().astype(np.float32)
    values -= values.mean(axis=0, keepdims=True)
    reduced = _reduce(values, rules.genome_dimensions).astype(np.float32)
    block = np.zeros((len(movie_ids), reduced.shape[1]), dtype=np.float32)
    position = np.searchsorted(movie_ids, covered)
    inside = (position < len(movie_ids)) & (movie_ids[np.minimum(position, len(movie_ids) - 1)] == covered)
    block[position[inside]] = reduced[inside]
    return block


def content_vectors(
    movies: pl.DataFrame,
    tags: pl.DataFrame | None = None,
    genome: pl.DataFrame | None = None,
    rules: ContentRules | None = None,
) -> ContentVectors:
    """One unit content vector per movie of ``movies`` (movie_id, year, genres)."""
    rules = rules or ContentRules()
    ordered = movies.sort("movie_id")
    movie_ids = ordered["movie_id"].to_numpy().astype(np.int64)
    empty_tags = pl.DataFrame(schema={"movie_id": pl.Int32, "tag": pl.String})
    genres, _ = genre_block(ordered["genres"].to_list())
    parts = {
        "genres": (genres, rules.genre_weight),
        "year": (
            year_block(ordered["year"].cast(pl.Float64).fill_null(np.nan).to_numpy()),
            rules.year_weight,
        ),
        "tags": (tag_block(movie_ids, tags if tags is not None else empty_tags, rules), rules.tag_weight),
        "genome": (
            genome_block(movie_ids, genome if genome is not None else pl.DataFrame(), rules),
            rules.genome_weight,
        ),
    }
    columns, blocks, coverage, start = [], {}, {}, 0
    for name, (block, weight) in parts.items():
        if block.shape[1] == 0 or weight == 0:
            continue
        unit = _unit_rows(block.astype(np.float32))
        coverage[name] = int((np.abs(unit).sum(axis=1) > 0).sum())
        columns.append(unit * np.float32(np.sqrt(weight)))
        blocks[name] = (start, start + block.shape[1])
        start += block.shape[1]
    stacked = np.hstack(columns) if columns else np.zeros((len(movie_ids), 1), dtype=np.float32)
    return ContentVectors(movie_ids, np.ascontiguousarray(_unit_rows(stacked)), blocks, coverage)
