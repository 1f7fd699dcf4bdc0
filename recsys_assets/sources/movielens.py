"""The real MovieLens releases: where they live, how to fetch them, how to verify them."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from ..storage import publish_directory

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens/"


@dataclass(frozen=True)
class Release:
    name: str
    folder: str  # top-level folder inside the zip archive
    md5: str | None  # None: the release is updated in place, use the published .md5 file
    size_mb: int

    @property
    def archive(self) -> str:
        return f"{self.name}.zip"


RELEASES = {
    r.name: r
    for r in (
        Release("ml-latest-small", "ml-latest-small", None, 1),
        Release("ml-latest", "ml-latest", None, 335),
        # ml-32m: 32,000,204 ratings of 87,585 movies; 238,950,008 bytes (GroupLens' .md5 file).
        Release("ml-32m", "ml-32m", "d472be332d4daa821edc399621853b57", 239),
        Release("ml-25m", "ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", 250),
        Release("ml-20m", "ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", 190),
        Release("ml-10m", "ml-10M100K", "ce571fd55effeba0271552578f2648bd", 63),
        Release("ml-1m", "ml-1m", "c4d9eecfca2ab87c1945afe126590906", 6),
        Release("ml-100k", "ml-100k", "0e33842e24a9c977be4e0107933c0723", 5),
    )
}


class DownloadError(RuntimeError):
    """A release could not be fetched or verified."""


def offline_help(release: str, raw_dir: Path) -> str:
    return (
        "Offline alternatives: point RECSYS_DATA_DIR at a local copy of the release "
        "(e.g. RECSYS_DATA_DIR=../shared/movielens/ml-latest-small), unzip "
        f"{release}.zip into {raw_dir / release}, or use RECSYS_DATASET=synthetic."
    )


def file_md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _expected_md5(release: Release, url: str, timeout: tuple[float, float]) -> str:
    if release.md5:
        return release.md5
    response = requests.get(url + ".md5", timeout=timeout)
    response.raise_for_status()
    match = re.search(r"\b[0-9a-f]{32}\b", response.text.lower())
    if not match:
        raise DownloadError(f"{url}.md5 holds no MD5 checksum: {response.text[:200]!r}")
    return match.group(0)


def download_release(
    name: str,
    raw_dir: Path,
    base_url: str = DEFAULT_BASE_URL,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch ``name`` into ``raw_dir/name``, verifying its MD5; returns the extracted directory.

    The archive is streamed to a temporary file, checked, extracted into a temporary directory and
    renamed into place, so an interrupted download never leaves a half-written dataset behind.
    """
    if name not in RELEASES:
        raise ValueError(f"unknown MovieLens release {name!r}; known: {', '.join(RELEASES)}")
    release = RELEASES[name]
    raw_dir = Path(raw_dir)
    target = raw_dir / name
    if target.is_dir():
        return target
    raw_dir.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + "/" + release.archive
    timeout = (connect_timeout, read_timeout)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=raw_dir))
    try:
        try:
            expected = _expected_md5(release, url, timeout)
            archive = staging / release.archive
            with requests.get(url, stream=True, timeout=timeout) as response:
                response.raise_for_status()
                total = int(response.headers.get("content-length", 0)) or None
                with (
                    open(archive, "wb") as out,
                    tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        desc=f"downloading {release.archive}",
                        disable=not progress,
                    ) as bar,
                ):
                    for block in response.iter_content(chunk_size=1 << 20):
                        out.write(block)
                        bar.update(len(block))
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise DownloadError(
                f"cannot reach {url} ({type(exc).__name__}). {offline_help(name, raw_dir)}"
            ) from exc
        except requests.HTTPError as exc:
            raise DownloadError(f"{url}: {exc}. {offline_help(name, raw_dir)}") from exc
        actual = file_md5(archive)
        if actual != expected:
            raise DownloadError(
                f"{url}: checksum mismatch (MD5 {actual}, expected {expected}); "
                "the download is corrupt or the file changed on the server. Nothing was kept."
            )
        extracted = staging / "extracted"
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(extracted)
        source = extracted / release.folder
        if not source.is_dir():
            raise DownloadError(f"{url}: archive has no {release.folder}/ folder")
        publish_directory(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
