"""Source resolution, downloads (against a real HTTP server on loopback) and settings."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CSV_MOVIES, CSV_RATINGS

from recsys_assets.settings import Settings, project_root
from recsys_assets.sources.movielens import DownloadError, download_release
from recsys_assets.sources.resolve import resolve_source
from recsys_assets.sources.synthetic import SyntheticConfig

TINY = SyntheticConfig(n_users=30, n_movies=60, n_ratings=600)


@pytest.fixture
def grouplens_mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A stand-in for the GroupLens file server: ml-latest-small.zip plus its published .md5."""
    root = tmp_path / "mirror"
    root.mkdir()
    archive = root / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("ml-latest-small/movies.csv", "\n".join(CSV_MOVIES) + "\n")
        bundle.writestr("ml-latest-small/ratings.csv", "\n".join(CSV_RATINGS) + "\n")
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {digest}\n")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_verifies_checksum_and_extracts(grouplens_mirror, tmp_path: Path) -> None:
    url, _ = grouplens_mirror
    directory = download_release("ml-latest-small", tmp_path / "raw", base_url=url, progress=False)
    assert (directory / "ratings.csv").read_text().startswith("userId,movieId")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["ml-latest-small"]


def test_corrupt_download_is_rejected_and_nothing_kept(grouplens_mirror, tmp_path: Path) -> None:
    url, root = grouplens_mirror
    (root / "ml-latest-small.zip.md5").write_text("0" * 32 + "\n")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_release("ml-latest-small", tmp_path / "raw", base_url=url, progress=False)
    assert list((tmp_path / "raw").iterdir()) == []


def test_unreachable_server_names_offline_alternatives(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        download_release("ml-latest-small", tmp_path / "raw", base_url=_closed_port_url(), progress=False)
    message = str(caught.value)
    assert (
        "cannot reach" in message and "RECSYS_DATA_DIR" in message and "RECSYS_DATASET=synthetic" in message
    )


def test_auto_prefers_local_copy(csv_dir: Path, tmp_path: Path) -> None:
    resolved = resolve_source("auto", tmp_path / "raw", data_dir=csv_dir, synthetic=TINY)
    assert resolved.kind == "movielens" and resolved.directory == csv_dir
    assert "local copy" in resolved.describe()


def test_auto_downloads_then_uses_the_cache(grouplens_mirror, tmp_path: Path) -> None:
    url, root = grouplens_mirror
    first = resolve_source("auto", tmp_path / "raw", base_url=url, synthetic=TINY)
    assert first.name == "ml-latest-small" and first.origin == "downloaded from GroupLens"
    (root / "ml-latest-small.zip").unlink()  # the cache must not need the server again
    second = resolve_source("auto", tmp_path / "raw", base_url=url, synthetic=TINY)
    assert second.origin.startswith("cached download")


def test_auto_offline_falls_back_to_synthetic_with_a_warning(tmp_path: Path) -> None:
    warnings: list[str] = []
    resolved = resolve_source(
        "auto", tmp_path / "raw", base_url=_closed_port_url(), synthetic=TINY, warn=warnings.append
    )
    assert resolved.kind == "synthetic" and (resolved.directory / "ratings.csv").is_file()
    assert len(warnings) == 1 and "SYNTHETIC" in warnings[0] and "cannot reach" in warnings[0]
    assert resolved.warnings == tuple(warnings)


def test_named_release_without_download_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="downloads are disabled"):
        resolve_source("ml-1m", tmp_path / "raw", allow_download=False)


def test_local_copy_without_movielens_files_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds no MovieLens files"):
        resolve_source("auto", tmp_path / "raw", data_dir=tmp_path)


def test_settings_resolve_relative_paths_against_project_root(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    settings = Settings.from_env({"RECSYS_DATA_ROOT": "somewhere", "RECSYS_DATA_DIR": "../x"})
    assert settings.data_root == project_root() / "somewhere"
    assert settings.data_dir == (project_root() / "../x").resolve()
    assert settings.bundle_root == project_root() / "somewhere" / "bundles"
    assert (
        settings.mlflow_tracking_uri.startswith("sqlite:///")
        and str(project_root()) in settings.mlflow_tracking_uri
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RECSYS_DATASET", "ml-2m", "not a known dataset"),
        ("RECSYS_ALLOW_DOWNLOAD", "maybe", "not a boolean"),
        ("RECSYS_SYNTHETIC_RATINGS", "lots", "not an integer"),
    ],
)
def test_settings_reject_bad_values(variable: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({variable: value})
