"""Fetch and unpack Microsoft's Cats and Dogs photos (kagglecatsanddogs_5340.zip).

`download_dataset(data_dir)` leaves `data_dir/PetImages/{Cat,Dog}/*.jpg` and
returns the `PetImages` path. The steps are arranged so that an interrupted run
can simply be started again:

* the archive (about 787 MB) is written to `<archive>.part` and resumed with an
  HTTP Range request; only a complete download is renamed to `<archive>`;
* the archive is checked (valid zip, CRCs, a `PetImages/` folder) before use;
* extraction happens in a temporary folder inside `data_dir`, and `PetImages`
  is moved into place only when complete, so its presence means "done".

The archive is kept after extraction (a rerun that lost `PetImages` then needs
no network); it may be deleted by hand to save space. Two runs on the same
`data_dir` at the same time are not supported.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

DEFAULT_URL = (
    "https://download.microsoft.com/download/3/E/1/"
    "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
)
TOP_FOLDER = "PetImages"
_TMP_PREFIX = f".{TOP_FOLDER}.extracting-"
_RETRY_PAUSE_S = 2.0  # multiplied by the attempt number; gives a flaky link time to recover


class DownloadError(Exception):
    """The dataset could not be fetched or unpacked; the message says what to do."""


def download_dataset(
    data_dir: Path,
    url: str = DEFAULT_URL,
    *,
    chunk_bytes: int = 1 << 20,
    retries: int = 3,
    timeout_s: float = 60.0,
) -> Path:
    """Make sure `data_dir/PetImages` holds the extracted dataset and return its path.

    Downloads `url` only when neither the extracted folder nor the archive exists.
    Raises DownloadError with a one-line message on any failure.
    """
    data_dir = Path(data_dir)
    target = data_dir / TOP_FOLDER
    if target.is_dir():  # only ever created by the final rename below
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / (PurePosixPath(urllib.parse.urlsplit(url).path).name or "dataset.zip")
    if not archive.exists():
        part = archive.with_name(archive.name + ".part")
        _fetch(url, part, chunk_bytes, retries, timeout_s)
        os.replace(part, archive)
    _check_archive(archive)
    _extract(archive, data_dir)
    return target


def _fetch(url: str, part: Path, chunk_bytes: int, retries: int, timeout_s: float) -> None:
    """Download `url` into `part`, resuming what is there, retrying dropped connections."""
    reason = "no attempt was made"
    with tqdm(desc=part.name, unit="B", unit_scale=True, unit_divisor=1024) as bar:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(_RETRY_PAUSE_S * attempt)
            try:
                if _fetch_once(url, part, chunk_bytes, timeout_s, bar):
                    return
                reason = "the connection closed before the end of the file"
            except urllib.error.HTTPError as exc:
                if exc.code < 500:  # 4xx will not get better by asking again
                    raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}; check the URL") from None
                reason = f"HTTP {exc.code} {exc.reason}"
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
                reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
    raise DownloadError(
        f"downloading {url} failed after {retries + 1} attempts ({reason}); "
        f"check the network and run the same command again to resume from {part}"
    )


def _fetch_once(url: str, part: Path, chunk_bytes: int, timeout_s: float, bar: tqdm) -> bool:
    """Make one request that continues `part`; return True when the file is complete."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise
        # Range not satisfiable: either `part` is already whole, or it is longer
        # than the file now on the server and has to be thrown away.
        total = re.fullmatch(r"bytes \*/(\d+)", exc.headers.get("Content-Range", ""))
        if total and int(total[1]) == have:
            return True
        part.unlink()
        return False
    with response:
        if response.status == 206:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not start or int(start[1]) != have:
                raise DownloadError(f"the server resumed {url} at the wrong offset; delete {part} and run again")
            mode = "ab"
        else:  # 200: Range was ignored (or not sent), the whole file follows
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        bar.reset(total=expected)
        bar.update(have)
        with open(part, mode) as out:
            # http.client returns b"" rather than raising when the peer closes
            # early, so completeness is judged by the size below.
            while chunk := response.read(chunk_bytes):
                out.write(chunk)
                bar.update(len(chunk))
    return expected is None or part.stat().st_size >= expected


def _check_archive(archive: Path) -> None:
    """Raise DownloadError (after deleting `archive`) unless it is a sound dataset zip."""
    problem = None
    try:
        if not zipfile.is_zipfile(archive):
            problem = "is not a zip file"
        else:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()  # reads every member and checks its CRC
                if bad is not None:
                    problem = f"is damaged (bad CRC in {bad})"
                elif not any(n.startswith(TOP_FOLDER + "/") for n in zf.namelist()):
                    problem = f"has no {TOP_FOLDER}/ folder"
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:  # testzip lets zlib.error through
        problem = f"is damaged ({exc})"
    if problem:
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{archive} {problem}; it was deleted, run the same command again to download it afresh")


def _extract(archive: Path, data_dir: Path) -> None:
    """Unpack the PetImages members of `archive` and move the folder into `data_dir`."""
    for stale in data_dir.glob(_TMP_PREFIX + "*"):  # left by runs killed mid-extraction
        shutil.rmtree(stale, ignore_errors=True)
    tmp = data_dir / f"{_TMP_PREFIX}{os.getpid()}"
    tmp.mkdir()
    root = tmp.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if m.filename.startswith(TOP_FOLDER + "/")]
            for member in members:  # zip-slip: refuse any path that leaves `tmp`
                if not (root / member.filename).resolve().is_relative_to(root):
                    raise DownloadError(f"{archive} contains an unsafe path {member.filename!r}; delete it")
            for member in tqdm(members, desc="extracting", unit="file"):
                zf.extract(member, tmp)
        os.replace(tmp / TOP_FOLDER, data_dir / TOP_FOLDER)
    except OSError as exc:
        raise DownloadError(f"extracting {archive} into {data_dir} failed ({exc}); "
                            "check free disk space and run the same command again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
