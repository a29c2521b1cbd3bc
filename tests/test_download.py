"""Tests for download.py against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import io
import shutil
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from simsiam import download
from simsiam.download import DownloadError, download_dataset

ARCHIVE_NAME = "kagglecatsanddogs_5340.zip"


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def members() -> dict[str, bytes]:
    """Files of a miniature PetImages archive, laid out like Microsoft's."""
    files = {f"PetImages/Cat/{i}.jpg": _jpeg((200, 40 * i, 0)) for i in range(3)}
    files |= {f"PetImages/Dog/{i}.jpg": _jpeg((0, 40 * i, 200)) for i in range(3)}
    files["PetImages/Cat/Thumbs.db"] = b"\0" * 64
    return files


def _zip_bytes(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr("readme[1].txt", "top-level extra, as in the real archive")
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def archive_bytes(members: dict[str, bytes]) -> bytes:
    return _zip_bytes(members)


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.payload` with Range support and optional misbehaviour."""

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        if srv.error_status:
            self.send_error(srv.error_status)
            return
        body, start = srv.payload, 0
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        rest = body[start:]
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        if srv.drops_left > 0:  # promise the full length, send half, hang up
            srv.drops_left -= 1
            self.wfile.write(rest[: len(rest) // 2])
            self.close_connection = True
            return
        if srv.stalls_left > 0:  # send half, then go silent until the test ends
            srv.stalls_left -= 1
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            srv.release.wait(10)
            self.close_connection = True
            return
        self.wfile.write(rest)

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server(archive_bytes: bytes):
    """A local HTTP server; tests set its payload and misbehaviour and read `ranges`.

    `ranges` gets one entry per request: its Range header, or None.
    """
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.ranges = archive_bytes, []
    srv.drops_left, srv.stalls_left, srv.ignore_range, srv.error_status = 0, 0, False, None
    srv.release = threading.Event()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/{ARCHIVE_NAME}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep urllib off any proxy (so 127.0.0.1 is reached directly) and skip retry pauses."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download, "_RETRY_PAUSE_S", 0.0)


def _fetch(data_dir: Path, srv, **kw) -> Path:
    return download_dataset(data_dir, srv.url, chunk_bytes=256, timeout_s=5.0, **kw)


def _assert_extracted(root: Path, members: dict[str, bytes]) -> None:
    assert root == root.parent / "PetImages"
    found = {p.relative_to(root.parent).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert found == members


def test_fresh_download_extracts_matching_files(tmp_path, server, members):
    """A fresh download yields PetImages with exactly the archive's files, and keeps the archive."""
    root = _fetch(tmp_path, server)
    _assert_extracted(root, members)
    assert server.ranges == [None]
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == server.payload
    assert not (tmp_path / f"{ARCHIVE_NAME}.part").exists()
    assert not list(tmp_path.glob(".PetImages.extracting-*"))


def test_dropped_connection_is_resumed_with_range(tmp_path, server, members):
    """A connection closed halfway is resumed from where it stopped and still completes."""
    server.drops_left = 1
    root = _fetch(tmp_path, server)
    _assert_extracted(root, members)
    half = len(server.payload) // 2
    assert server.ranges == [None, f"bytes={half}-"]


def test_stalled_read_times_out_and_resumes(tmp_path, server, members):
    """A read that raises midway (here a timeout) is retried from where it stopped."""
    server.stalls_left = 1
    root = download_dataset(tmp_path, server.url, chunk_bytes=256, timeout_s=0.3)
    _assert_extracted(root, members)
    assert len(server.ranges) == 2 and server.ranges[0] is None
    # Resumes after the bytes already written (whole chunks), not from zero.
    resumed_at = int(server.ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(server.payload) // 2


def test_existing_part_file_is_resumed_not_restarted(tmp_path, server, members):
    """A .part file from an earlier run is continued with a Range request."""
    n = len(server.payload) // 3
    (tmp_path / f"{ARCHIVE_NAME}.part").write_bytes(server.payload[:n])
    root = _fetch(tmp_path, server)
    _assert_extracted(root, members)
    assert server.ranges == [f"bytes={n}-"]


def test_complete_part_file_needs_no_bytes(tmp_path, server, members):
    """A .part already holding the whole file is accepted when the server answers 416."""
    (tmp_path / f"{ARCHIVE_NAME}.part").write_bytes(server.payload)
    _assert_extracted(_fetch(tmp_path, server), members)
    assert server.ranges == [f"bytes={len(server.payload)}-"]


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, members):
    """A server answering 200 to a Range request makes the .part start over, not append."""
    server.ignore_range = True
    (tmp_path / f"{ARCHIVE_NAME}.part").write_bytes(server.payload[:100])
    root = _fetch(tmp_path, server)
    _assert_extracted(root, members)
    assert server.ranges == ["bytes=100-"]
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == server.payload


def test_persistent_drops_give_up_with_resume_hint(tmp_path, server):
    """After `retries` failed retries a DownloadError says to rerun, and the .part is kept."""
    server.drops_left = 10
    with pytest.raises(DownloadError, match="run the same command again"):
        _fetch(tmp_path, server, retries=2)
    assert len(server.ranges) == 3
    assert (tmp_path / f"{ARCHIVE_NAME}.part").stat().st_size > 0
    assert not (tmp_path / "PetImages").exists()


def test_http_404_fails_at_once(tmp_path, server):
    """A 4xx answer raises DownloadError without retrying."""
    server.error_status = 404
    with pytest.raises(DownloadError, match="HTTP 404"):
        _fetch(tmp_path, server)
    assert len(server.ranges) == 1


def test_corrupt_archive_raises_and_leaves_nothing(tmp_path, server):
    """A download that is not a zip raises DownloadError, is deleted, and creates no PetImages."""
    server.payload = b"<html>not a zip</html>" * 50
    with pytest.raises(DownloadError, match="not a zip"):
        _fetch(tmp_path, server)
    assert not (tmp_path / "PetImages").exists()
    assert not (tmp_path / ARCHIVE_NAME).exists()


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_zip_with_damaged_member_is_rejected(tmp_path, server, members, compression):
    """A zip whose member data is damaged (bad CRC, bad deflate stream) is rejected and deleted."""
    data = bytearray(_zip_bytes(members, compression))
    data[data.index(b"PetImages/Cat/0.jpg") + 40] ^= 0xFF  # inside the first member's data
    server.payload = bytes(data)
    with pytest.raises(DownloadError, match="is damaged"):
        _fetch(tmp_path, server)
    assert not (tmp_path / "PetImages").exists()
    assert not (tmp_path / ARCHIVE_NAME).exists()


def test_zip_without_petimages_is_rejected(tmp_path, server):
    """A valid zip lacking the PetImages/ folder is rejected."""
    server.payload = _zip_bytes({"Other/0.jpg": _jpeg((1, 2, 3))})
    with pytest.raises(DownloadError, match="no PetImages"):
        _fetch(tmp_path, server)
    assert not (tmp_path / "PetImages").exists()


def test_zip_slip_member_is_refused(tmp_path, server):
    """A member path escaping the extraction folder aborts extraction and writes nothing outside."""
    server.payload = _zip_bytes({"PetImages/Cat/0.jpg": _jpeg((1, 2, 3)), "PetImages/../../evil.jpg": b"x"})
    data_dir = tmp_path / "data"
    with pytest.raises(DownloadError, match="unsafe path"):
        _fetch(data_dir, server)
    assert not (tmp_path / "evil.jpg").exists() and not (data_dir / "evil.jpg").exists()
    assert not (data_dir / "PetImages").exists()


def test_existing_extraction_makes_no_request(tmp_path, server):
    """An existing PetImages folder is returned at once, without contacting the server."""
    (tmp_path / "PetImages" / "Cat").mkdir(parents=True)
    assert _fetch(tmp_path, server) == tmp_path / "PetImages"
    assert server.ranges == []


def test_kept_archive_is_reused_without_request(tmp_path, server, members):
    """With the archive present but PetImages gone, extraction reruns with no request."""
    _fetch(tmp_path, server)
    shutil.rmtree(tmp_path / "PetImages")
    server.ranges.clear()
    _assert_extracted(_fetch(tmp_path, server), members)
    assert server.ranges == []


def test_interrupted_extraction_leaves_no_petimages(tmp_path, server, members, monkeypatch):
    """A failure midway through extraction leaves neither PetImages nor the temporary folder."""
    real_extract, calls = zipfile.ZipFile.extract, []

    def failing_extract(self, member, path=None, pwd=None):
        calls.append(member)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", failing_extract)
    with pytest.raises(DownloadError, match="No space left"):
        _fetch(tmp_path, server)
    assert not (tmp_path / "PetImages").exists()
    assert not list(tmp_path.glob(".PetImages.extracting-*"))
    assert (tmp_path / ARCHIVE_NAME).exists()  # kept, so the rerun needs no network


def test_stale_extraction_folder_is_removed(tmp_path, server, members):
    """Temporary folders left by a killed earlier run are cleaned up."""
    stale = tmp_path / ".PetImages.extracting-99999" / "PetImages" / "Cat"
    stale.mkdir(parents=True)
    _assert_extracted(_fetch(tmp_path, server), members)
    assert not list(tmp_path.glob(".PetImages.extracting-*"))


def test_train_download_flag_fetches_resumes_and_trains(tmp_path, server, capsys):
    """train.py --download against a server that drops the connection midway: the archive is resumed,
    unpacked into the parent of --data, and the run trains on it."""
    import train

    files = {f"PetImages/{name}/{i}.jpg": _jpeg((37 * i % 256, 90 if name == "Cat" else 180, 11 * i % 256))
             for name in ("Cat", "Dog") for i in range(12)}
    server.payload = _zip_bytes(files | {"PetImages/Dog/Thumbs.db": b"\0" * 64})
    server.drops_left = 1
    data = tmp_path / "data" / "PetImages"
    train.main(["--download", "--download-url", server.url, "--data", str(data), "--cache-dir", str(tmp_path / "c"),
                "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--image-size", "32",
                "--labels", "4", "--test-fraction", "0.2", "--device", "cpu"])
    assert server.ranges[0] is None and server.ranges[1].startswith("bytes=")
    assert len(list(data.rglob("*.jpg"))) == 24 and (tmp_path / "run" / "siam.pt").is_file()
    assert "24 images" in capsys.readouterr().out
