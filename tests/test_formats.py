"""Readers for each MovieLens layout, and the errors they give on malformed files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import CSV_MOVIES, CSV_RATINGS, write_lines

from recsys_assets.sources.formats import (
    MOVIES_SCHEMA,
    RATINGS_SCHEMA,
    DataFormatError,
    detect_layout,
    read_movies,
    read_ratings,
)


def test_csv_layout_normalises_schema(csv_dir: Path) -> None:
    ratings = read_ratings(csv_dir)
    movies = read_movies(csv_dir)
    assert ratings.schema == pl.Schema(RATINGS_SCHEMA)
    assert movies.schema == pl.Schema(MOVIES_SCHEMA)
    assert ratings.row(1) == (1, 2, 3.5, 964981247)
    by_id = {row["movie_id"]: row for row in movies.to_dicts()}
    assert by_id[1]["title"] == "Toy Story" and by_id[1]["year"] == 1995
    assert by_id[2]["title"] == "American President, The"  # quoted comma survives
    assert by_id[3]["year"] is None
    assert by_id[4]["genres"] == []  # "(no genres listed)" is no genre
    assert by_id[1]["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]


def test_dat_layout_ml1m(tmp_path: Path) -> None:
    directory = tmp_path / "ml-1m"
    write_lines(
        directory / "movies.dat",
        ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Café Society (1995)::Drama"],
        encoding="latin-1",
    )
    write_lines(directory / "ratings.dat", ["1::1::5::978300760", "1::2::3::978302109"])
    assert detect_layout(directory).name == "dat"
    movies = read_movies(directory)
    assert movies["genres"][0].to_list() == ["Animation", "Children", "Comedy"]
    assert movies["title"][1] == "Café Society"  # decoded from Latin-1
    ratings = read_ratings(directory)
    assert ratings.to_dicts()[0] == {
        "user_id": 1,
        "movie_id": 1,
        "rating": 5.0,
        "timestamp": 978300760,
    }


def test_100k_layout(tmp_path: Path) -> None:
    directory = tmp_path / "ml-100k"
    flags = ["0"] * 19
    flags[3] = flags[4] = flags[5] = "1"  # Animation, Children's, Comedy
    write_lines(
        directory / "u.item",
        [
            "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags),
            "2|Señor (1996)|01-Jan-1996||http://y|" + "|".join(["1"] + ["0"] * 18),
        ],
        encoding="latin-1",
    )
    write_lines(directory / "u.data", ["196\t1\t3\t881250949", "186\t2\t3\t891717742"])
    movies = read_movies(directory)
    assert movies["genres"].to_list() == [["Animation", "Children", "Comedy"], []]
    assert movies["title"].to_list() == ["Toy Story", "Señor"]
    assert read_ratings(directory)["user_id"].to_list() == [196, 186]


def test_unknown_directory_names_expected_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="ratings.csv \\+ movies.csv"):
        detect_layout(tmp_path)


def _ratings_error(csv_dir: Path, lines: list[str], encoding: str = "utf-8") -> DataFormatError:
    write_lines(csv_dir / "ratings.csv", lines, encoding)
    with pytest.raises(DataFormatError) as caught:
        read_ratings(csv_dir)
    assert str(csv_dir / "ratings.csv") in str(caught.value)
    return caught.value


def test_missing_column_named(csv_dir: Path) -> None:
    error = _ratings_error(csv_dir, ["userId,movieId,timestamp", "1,1,964982703"])
    assert "missing column(s) rating" in str(error)


def test_wrong_delimiter_named(csv_dir: Path) -> None:
    error = _ratings_error(csv_dir, [line.replace(",", ";") for line in CSV_RATINGS])
    assert "semicolon-separated" in str(error)


def test_non_numeric_value_names_line_and_column(csv_dir: Path) -> None:
    lines = [*CSV_RATINGS]
    lines[3] = "2,1,five,964982224"
    error = _ratings_error(csv_dir, lines)
    assert error.problems == [(4, "column 'rating' value 'five' is not a number")]


def test_truncated_line_named(csv_dir: Path) -> None:
    lines = [*CSV_RATINGS, "4,1,3."]
    error = _ratings_error(csv_dir, lines)
    assert error.problems[0][0] == len(lines)
    assert "truncated" in error.problems[0][1]


def test_wrong_encoding_named(csv_dir: Path) -> None:
    lines = [*CSV_MOVIES, "5,Amélie (2001),Comedy|Romance"]
    write_lines(csv_dir / "movies.csv", lines, encoding="latin-1")
    with pytest.raises(DataFormatError) as caught:
        read_movies(csv_dir)
    line, message = caught.value.problems[0]
    assert line == len(lines)
    assert "0xe9" in message and "wrong encoding" in message


def test_every_bad_line_reported_up_to_a_limit(csv_dir: Path) -> None:
    lines = [CSV_RATINGS[0]] + [f"{i},1,x,1" for i in range(1, 40)]
    error = _ratings_error(csv_dir, lines)
    assert len(error.problems) == 10 and "and more" in str(error)
