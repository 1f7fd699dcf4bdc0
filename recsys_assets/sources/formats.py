"""Readers for every MovieLens file layout, producing one normalised schema.

Layouts:
- ``csv``: ``ratings.csv`` / ``movies.csv`` with a header (ml-latest-small, ml-latest, ml-20m, ml-25m)
- ``dat``: ``ratings.dat`` / ``movies.dat`` separated by ``::`` (ml-1m, ml-10m)
- ``100k``: ``u.data`` (tab separated) / ``u.item`` (pipe separated, Latin-1)

Parsing is done by polars on the fast path. When polars refuses a file, or the result has holes,
a line-by-line diagnosis names the file, the line and the problem, so nobody has to read a
polars traceback to find a truncated line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

RATINGS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Int32(),
    "movie_id": pl.Int32(),
    "rating": pl.Float32(),
    "timestamp": pl.Int64(),
}
TAGS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Int32(),
    "movie_id": pl.Int32(),
    "tag": pl.String(),
    "timestamp": pl.Int64(),
}
GENOME_SCHEMA: dict[str, pl.DataType] = {
    "movie_id": pl.Int32(),
    "tag": pl.String(),
    "relevance": pl.Float32(),
}
MOVIES_SCHEMA: dict[str, pl.DataType] = {
    "movie_id": pl.Int32(),
    "title": pl.String(),
    "year": pl.Int16(),
    "genres": pl.List(pl.String()),
}

# ml-100k's genre flag columns, in file order, with names as ml-latest spells them.
ML100K_GENRES = (
    "(no genres listed)", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
_GENRE_ALIASES = {"Children's": "Children"}
_TITLE_YEAR = re.compile(r"\s*\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")
MAX_REPORTED_PROBLEMS = 10


class DataFormatError(ValueError):
    """A source file cannot be read; names the file and each offending line."""

    def __init__(self, path: Path, problems: list[tuple[int | None, str]], more: bool = False):
        self.path = Path(path)
        self.problems = problems
        lines = [f"line {line}: {msg}" if line else msg for line, msg in problems]
        tail = f"\n  ... and more (first {len(problems)} shown)" if more else ""
        super().__init__(f"{self.path}: cannot read\n  " + "\n  ".join(lines) + tail)


@dataclass(frozen=True)
class Column:
    name: str  # name in the file (or positional label when the file has no header)
    target: str  # name in the normalised schema
    kind: str  # "int", "float" or "str"


@dataclass(frozen=True)
class FileSpec:
    """How one MovieLens file is laid out."""

    filename: str
    separator: str
    header: bool
    encoding: str
    columns: tuple[Column, ...]  # the columns we read, by position when there is no header
    n_fields: int | None  # fields per line when there is no header

    def describe(self) -> str:
        sep = {"\t": "tab", "|": "pipe", ",": "comma", "::": "'::'"}[self.separator]
        return f"{self.filename} ({sep}-separated, {self.encoding})"


_RATING_COLS = (
    Column("userId", "user_id", "int"),
    Column("movieId", "movie_id", "int"),
    Column("rating", "rating", "float"),
    Column("timestamp", "timestamp", "int"),
)
_MOVIE_COLS = (
    Column("movieId", "movie_id", "int"),
    Column("title", "title", "str"),
    Column("genres", "genres", "str"),
)

_TAG_COLS = (
    Column("userId", "user_id", "int"),
    Column("movieId", "movie_id", "int"),
    Column("tag", "tag", "str"),
    Column("timestamp", "timestamp", "int"),
)
# User tags, where a release has them (ml-latest*, ml-20m/25m/32m: tags.csv; ml-10m: tags.dat).
TAG_FILES = {
    "csv": FileSpec("tags.csv", ",", True, "utf-8", _TAG_COLS, None),
    "dat": FileSpec("tags.dat", "::", False, "utf-8", _TAG_COLS, 4),
}
# The tag genome (ml-20m, ml-25m, ml-32m): relevance of ~1,100 tags for the better-known movies.
GENOME_SCORES = FileSpec(
    "genome-scores.csv",
    ",",
    True,
    "utf-8",
    (
        Column("movieId", "movie_id", "int"),
        Column("tagId", "tag_id", "int"),
        Column("relevance", "relevance", "float"),
    ),
    None,
)
GENOME_TAGS = FileSpec(
    "genome-tags.csv",
    ",",
    True,
    "utf-8",
    (Column("tagId", "tag_id", "int"), Column("tag", "tag", "str")),
    None,
)


@dataclass(frozen=True)
class Layout:
    name: str
    ratings: FileSpec
    movies: FileSpec


LAYOUTS = {
    "csv": Layout(
        "csv",
        FileSpec("ratings.csv", ",", True, "utf-8", _RATING_COLS, None),
        FileSpec("movies.csv", ",", True, "utf-8", _MOVIE_COLS, None),
    ),
    "dat": Layout(
        "dat",
        FileSpec("ratings.dat", "::", False, "utf-8", _RATING_COLS, 4),
        # ml-1m's movies.dat is Latin-1; ml-10m's is plain ASCII, which Latin-1 also reads.
        FileSpec("movies.dat", "::", False, "latin-1", _MOVIE_COLS, 3),
    ),
    "100k": Layout(
        "100k",
        FileSpec("u.data", "\t", False, "utf-8", _RATING_COLS, 4),
        FileSpec(
            "u.item",
            "|",
            False,
            "latin-1",
            (Column("movieId", "movie_id", "int"), Column("title", "title", "str")),
            5 + len(ML100K_GENRES),
        ),
    ),
}


def detect_layout(directory: Path) -> Layout:
    """Pick the layout whose ratings and movies files are both present in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MovieLens directory {directory} does not exist")
    for layout in LAYOUTS.values():
        if (directory / layout.ratings.filename).is_file() and (directory / layout.movies.filename).is_file():
            return layout
    present = sorted(p.name for p in directory.iterdir())[:20]
    expected = "; ".join(f"{lay.ratings.filename} + {lay.movies.filename}" for lay in LAYOUTS.values())
    raise FileNotFoundError(
        f"{directory} holds no MovieLens files (expected one of: {expected}); found: {present}"
    )


# --------------------------------------------------------------------------- diagnosis


def _split_line(text: str, spec: FileSpec) -> list[str]:
    if spec.separator == ",":
        return next(csv.reader([text]), [])
    return text.split(spec.separator)


def _check_value(value: str, kind: str) -> str | None:
    if value.strip() == "":
        return "is empty"
    if kind == "int":
        try:
            int(value)
        except ValueError:
            return f"value {value!r} is not an integer"
    elif kind == "float":
        try:
            float(value)
        except ValueError:
            return f"value {value!r} is not a number"
    return None


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, raw.rstrip(b"\r\n")


def diagnose(path: Path, spec: FileSpec, positions: dict[str, int]) -> list[tuple[int | None, str]]:
    """Scan ``path`` line by line and describe what is wrong with it (empty list: nothing found)."""
    problems: list[tuple[int | None, str]] = []
    expected_fields = len(positions) if spec.header else spec.n_fields
    for number, raw in _iter_lines(path):
        if spec.header and number == 1:
            continue
        if not raw.strip():
            problems.append((number, "is blank"))
        else:
            try:
                text = raw.decode(spec.encoding)
            except UnicodeDecodeError as exc:
                problems.append(
                    (
                        number,
                        f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not valid "
                        f"{spec.encoding}: the file has the wrong encoding (expected {spec.encoding})",
                    )
                )
                text = None
            if text is not None:
                fields = _split_line(text, spec)
                if expected_fields and len(fields) < expected_fields:
                    problems.append(
                        (
                            number,
                            f"has {len(fields)} fields, expected {expected_fields} "
                            f"(truncated line?): {text[:80]!r}",
                        )
                    )
                elif expected_fields and len(fields) > expected_fields and not spec.header:
                    problems.append(
                        (
                            number,
                            f"has {len(fields)} fields, expected {expected_fields}: {text[:80]!r}",
                        )
                    )
                else:
                    for column in spec.columns:
                        issue = _check_value(fields[positions[column.name]], column.kind)
                        if issue:
                            problems.append((number, f"column {column.name!r} {issue}"))
                            break
        if len(problems) > MAX_REPORTED_PROBLEMS:
            break
    return problems


# --------------------------------------------------------------------------- reading


def _header_positions(path: Path, spec: FileSpec) -> dict[str, int]:
    """Map each needed column to its field position, checking the header when there is one."""
    if not spec.header:
        return {column.name: i for i, column in enumerate(spec.columns)}
    with open(path, "rb") as handle:
        first = handle.readline().rstrip(b"\r\n")
    if not first:
        raise DataFormatError(path, [(1, "the file is empty: expected a header line")])
    try:
        header_text = first.decode(spec.encoding).lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            path, [(1, f"header is not valid {spec.encoding} (byte 0x{first[exc.start]:02x})")]
        ) from None
    header = [h.strip() for h in _split_line(header_text, spec)]
    wanted = [column.name for column in spec.columns]
    missing = [name for name in wanted if name not in header]
    if missing:
        hint = ""
        if len(header) == 1:
            for sep, label in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe"), ("::", "'::'")):
                if sep in header_text:
                    hint = f"; the header looks {label}-separated, expected comma-separated"
                    break
        raise DataFormatError(
            path,
            [(1, f"missing column(s) {', '.join(missing)}; header is {header_text[:120]!r}{hint}")],
        )
    return {name: header.index(name) for name in wanted}


def _header_only(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.readline()
        return not any(line.strip() for line in handle)


def _polars_read(path: Path, spec: FileSpec, positions: dict[str, int]) -> pl.DataFrame:
    dtypes = {"int": pl.Int64, "float": pl.Float64, "str": pl.String}
    if spec.header and _header_only(path):
        # No rows is an empty table; whether that is allowed is for validation to say.
        return pl.DataFrame(schema={c.target: dtypes[c.kind] for c in spec.columns})
    if spec.separator == "::" or spec.encoding != "utf-8":
        # polars only takes one-byte separators and UTF-8: normalise in memory first.
        text = path.read_bytes().decode(spec.encoding)
        source: io.BytesIO | Path = io.BytesIO(text.replace(spec.separator, "\x1f").encode())
        separator = "\x1f"
    else:
        source, separator = path, spec.separator
    by_position = sorted(spec.columns, key=lambda c: positions[c.name])
    frame = pl.read_csv(
        source,
        separator=separator,
        has_header=False,
        skip_rows=1 if spec.header else 0,
        columns=[positions[c.name] for c in by_position],
        quote_char='"' if spec.separator == "," else None,
        infer_schema=False,
    )
    frame.columns = [c.target for c in by_position]  # a projection keeps file order
    # Unparseable numbers become nulls here; read_table then diagnoses them line by line.
    return frame.with_columns(
        pl.col(c.target).str.strip_chars().cast(dtypes[c.kind], strict=False)
        for c in spec.columns
        if c.kind != "str"
    )


def read_table(path: Path, spec: FileSpec) -> pl.DataFrame:
    """Read the needed columns of one file, or raise :class:`DataFormatError` naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected {spec.describe()})")
    positions = _header_positions(path, spec)
    try:
        frame = _polars_read(path, spec, positions)
        failure = None
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as exc:
        frame, failure = None, exc
    if frame is not None and frame.null_count().sum_horizontal().item() == 0:
        return frame
    problems = diagnose(path, spec, positions)
    if problems:
        more = len(problems) > MAX_REPORTED_PROBLEMS
        raise DataFormatError(path, problems[:MAX_REPORTED_PROBLEMS], more=more)
    raise DataFormatError(path, [(None, f"unreadable as {spec.describe()}: {failure}")])


def parse_title(title: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """Split "Heat (1995)" into ("Heat", 1995); titles without a year keep a null year."""
    year = title.str.extract(_TITLE_YEAR.pattern, 1).cast(pl.Int16, strict=False)
    clean = title.str.replace(_TITLE_YEAR.pattern, "").str.strip_chars()
    return clean, year


def _normalise_genres(genres: pl.Expr) -> pl.Expr:
    split = genres.str.split("|").list.eval(pl.element().str.strip_chars().replace(_GENRE_ALIASES))
    return split.list.eval(pl.element().filter((pl.element() != NO_GENRES) & (pl.element() != "")))


def read_ratings(directory: Path, layout: Layout | None = None) -> pl.DataFrame:
    layout = layout or detect_layout(directory)
    frame = read_table(Path(directory) / layout.ratings.filename, layout.ratings)
    return frame.select(pl.col(name).cast(dtype) for name, dtype in RATINGS_SCHEMA.items())


def read_movies(directory: Path, layout: Layout | None = None) -> pl.DataFrame:
    layout = layout or detect_layout(directory)
    path = Path(directory) / layout.movies.filename
    if layout.name == "100k":
        frame = read_table(path, layout.movies)
        flags = _read_ml100k_genre_flags(path, layout.movies)
        frame = frame.with_columns(genres=flags)
    else:
        frame = read_table(path, layout.movies).with_columns(genres=_normalise_genres(pl.col("genres")))
    title, year = parse_title(pl.col("title"))
    return frame.select(
        pl.col("movie_id").cast(pl.Int32),
        title.alias("title"),
        year.alias("year"),
        pl.col("genres").cast(pl.List(pl.String)),
    ).unique("movie_id", keep="first", maintain_order=True)


def read_tags(directory: Path, layout: Layout | None = None) -> pl.DataFrame:
    """Every user tag as (user_id, movie_id, tag, timestamp); empty when the release has none."""
    layout = layout or detect_layout(directory)
    spec = TAG_FILES.get(layout.name)
    if spec is None or not (Path(directory) / spec.filename).is_file():
        return pl.DataFrame(schema=TAGS_SCHEMA)
    frame = read_table(Path(directory) / spec.filename, spec)
    return frame.select(pl.col(name).cast(dtype) for name, dtype in TAGS_SCHEMA.items())


def read_genome(directory: Path) -> pl.DataFrame:
    """The tag genome as (movie_id, tag, relevance); empty when the release has none."""
    scores_path, tags_path = Path(directory) / GENOME_SCORES.filename, Path(directory) / GENOME_TAGS.filename
    if not scores_path.is_file():
        return pl.DataFrame(schema=GENOME_SCHEMA)
    if not tags_path.is_file():
        raise FileNotFoundError(f"{scores_path} needs {tags_path} (the genome's tag names)")
    scores = read_table(scores_path, GENOME_SCORES)
    names = read_table(tags_path, GENOME_TAGS)
    return scores.join(names, on="tag_id", how="left", validate="m:1").select(
        pl.col(name).cast(dtype) for name, dtype in GENOME_SCHEMA.items()
    )


def _read_ml100k_genre_flags(path: Path, spec: FileSpec) -> pl.Series:
    text = path.read_bytes().decode(spec.encoding)
    flags = pl.read_csv(
        io.BytesIO(text.encode()),
        separator="|",
        has_header=False,
        columns=list(range(5, 5 + len(ML100K_GENRES))),
        quote_char=None,
        infer_schema=False,
    )
    flags.columns = list(ML100K_GENRES)
    flagged = [pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in ML100K_GENRES if g != NO_GENRES]
    listed = flags.select(pl.concat_list(flagged).list.drop_nulls())
    return listed.to_series()
