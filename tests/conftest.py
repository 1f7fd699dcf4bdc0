from __future__ import annotations

import os
from pathlib import Path

import pytest

from recsys_assets.settings import project_root

ML_SMALL_DEFAULT = project_root().parent / "shared" / "movielens" / "ml-latest-small"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's RECSYS_* settings or writes into the checkout's data/."""
    for name in list(os.environ):
        if name.startswith("RECSYS_") and not name.startswith("RECSYS_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RECSYS_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("RECSYS_ALLOW_DOWNLOAD", "false")


@pytest.fixture(scope="session")
def ml_latest_small() -> Path:
    """The real ml-latest-small beside the checkout (or RECSYS_TEST_ML_LATEST_SMALL)."""
    path = Path(os.environ.get("RECSYS_TEST_ML_LATEST_SMALL", ML_SMALL_DEFAULT))
    if not (path / "ratings.csv").is_file():
        pytest.skip(f"ml-latest-small not found at {path}; set RECSYS_TEST_ML_LATEST_SMALL")
    return path


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


CSV_MOVIES = [
    "movieId,title,genres",
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
    '2,"American President, The (1995)",Comedy|Drama|Romance',
    "3,Babylon 5,Sci-Fi",
    "4,Some Documentary (2010),(no genres listed)",
]
CSV_RATINGS = [
    "userId,movieId,rating,timestamp",
    "1,1,4.0,964982703",
    "1,2,3.5,964981247",
    "2,1,5.0,964982224",
    "2,3,2.0,964983815",
    "3,4,0.5,964982931",
]


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ml-csv"
    write_lines(directory / "movies.csv", CSV_MOVIES)
    write_lines(directory / "ratings.csv", CSV_RATINGS)
    return directory


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The serving tests' synthetic data (see serving_support), built once per session."""
    from serving_support import serving_dataset

    return serving_dataset(tmp_path_factory.mktemp("syn") / "d")


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, dataset: dict) -> dict[str, Path]:
    from serving_support import serving_bundles

    return serving_bundles(tmp_path_factory.mktemp("bundles"), dataset)
