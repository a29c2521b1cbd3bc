"""The decoded images on disk: every image decoded once, on all cores, into an (N, 3, S, S) uint8 array
(S = the cache resolution, a little above the training resolution) that every later run memory-maps.

A cache folder, named after its data folder, resolution and a key of the file list:
    images.u8     the kept images, in file order
    meta.json     the kept and skipped files, each kept photo's shorter side and perceptual hash (of its pixels:
                  the leak rule's identity of a photo), the shape, byte count and a digest of sampled rows
    skipped.txt   each undecodable file and why
It is built in a staging folder renamed into place when complete, checked against meta.json on every open and
rebuilt when damaged; a killed build's staging folder is removed by the next run. A dead decoding process, a
full disk or a write error ends the build with a CacheError that says what the cache needs.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from simsiam import decode


class CacheError(Exception):
    """The cache cannot be built (no space, a dead decoding process, a write error); the message says what it
    needs and what to change."""


# ---------------------------------------------------------------- decoding


_worker_array: np.memmap | None = None  # each decoding process opens the cache file once


def _open_worker(array_path: str, shape: tuple, parent: int) -> None:
    global _worker_array
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process' to handle: it cancels and cleans up
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _worker_array = np.memmap(array_path, dtype=np.uint8, mode="r+", shape=shape)


def _exit_with(parent: int) -> None:
    """End this decoding process once the main one is gone (kill -9, the OOM killer): an orphan would wait for
    work for ever, holding the deleted staging file's disk space."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _decode_into(task: tuple[int, str]) -> tuple[int, int, int, str | None]:
    """(index, the photo's shorter side in px, its perceptual hash, None) once its row is written, or (index, 0, 0,
    why it failed)."""
    index, path = task
    try:
        square, side, content = decode.decode_file(Path(path), _worker_array.shape[-1])
        _worker_array[index] = square.transpose(2, 0, 1)
        return index, side, content, None
    except Exception as error:  # any undecodable file is skipped and reported, never fatal
        return index, 0, 0, decode.failure_kind(Path(path), error)


def decode_all(root: Path, files: list[str], array_path: Path, shape: tuple,
               workers: int) -> tuple[dict[int, str], dict[int, tuple[int, int]]]:
    """Decode each file into its row of the (N, 3, S, S) array at `array_path` on `workers` processes, with a
    progress bar; returns the failures (index -> kind) and, for the decoded photos, index -> (shorter side in px,
    perceptual hash).
    A process that dies (killed for memory, SIGBUS) raises BrokenProcessPool instead of losing its images and
    leaving the build waiting for ever."""
    tasks = [(index, str(root / name)) for index, name in enumerate(files)]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_open_worker,
                               initargs=(str(array_path), shape, os.getpid()))
    chunksize = max(1, min(64, len(tasks) // (4 * workers)))  # 64 amortises the messages; less keeps all busy
    failures: dict[int, str] = {}
    decoded: dict[int, tuple[int, int]] = {}
    try:
        results = pool.map(_decode_into, tasks, chunksize=chunksize)
        for index, side, content, failure in tqdm(results, total=len(tasks), unit="img", mininterval=0.5,
                                                  desc=f"decoding {root.name} at {shape[-1]} px"):
            if failure:
                failures[index] = failure
            else:
                decoded[index] = side, content
    finally:
        pool.shutdown(cancel_futures=True)  # after an error or Ctrl-C, only the chunks already running finish
    return failures, decoded


# ---------------------------------------------------------------- the cache on disk: staging, leftovers, checks


SAMPLED_ROWS = 64  # rows hashed into the content digest: 5.6 MB at 171 px, cheap enough for every open


def staging_path(target: Path) -> Path:
    """Where `target` is written before it is renamed into place. The name says which process owns it, so a
    later run can remove it once that process is gone; the host name keeps machines sharing a cache folder
    (a home directory over NFS) from removing each other's."""
    return target.with_name(f"{target.name}.building-{socket.gethostname()}-{os.getpid()}")


def process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate it: assume alive, never remove
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def remove_abandoned(folder: Path) -> None:
    """Remove the staging folders and files in `folder` whose process on this host is gone (killed runs).
    Also reads the older `<name>.building-<pid>` form, without a host name."""
    if not folder.is_dir():
        return
    for path in folder.glob("*.building-*"):
        host, _, pid = path.name.rpartition(".building-")[2].rpartition("-")
        if host in ("", socket.gethostname()) and pid.isdigit() and not process_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)  # another run may be removing it too
            else:
                path.unlink(missing_ok=True)


def content_digest(array_path: Path, shape: tuple) -> str:
    """sha1 of the shape and of up to SAMPLED_ROWS rows spread evenly over the (N, 3, S, S) array: catches a
    cache overwritten or mixed up with another, not a few bytes changed in a row it does not read."""
    count = shape[0]
    sampled = min(count, SAMPLED_ROWS)
    rows = [i * (count - 1) // max(sampled - 1, 1) for i in range(sampled)]  # distinct, first and last included
    row_bytes = math.prod(shape[1:])
    digest = hashlib.sha1(repr(tuple(shape)).encode())
    with open(array_path, "rb") as file:
        for row in rows:
            file.seek(row * row_bytes)
            digest.update(file.read(row_bytes))
    return digest.hexdigest()


def cache_problem(folder: Path, files: list[str], size: int) -> str | None:
    """Why the cache in `folder` cannot be trusted, or None when it is whole: meta.json must parse and list
    exactly `files` (kept and skipped), and images.u8 must have the recorded shape, byte count and digest."""
    try:
        meta = json.loads((folder / "meta.json").read_bytes())
        shape, expected_bytes, digest = tuple(meta["shape"]), meta["bytes"], meta["digest"]
        listed = sorted([*meta["files"], *meta["skipped"]])
        if not len(meta["sides"]) == len(meta["hashes"]) == len(meta["files"]):
            raise ValueError("one shorter side and one perceptual hash per kept file")
    except FileNotFoundError:
        return "meta.json missing"
    except (OSError, ValueError, KeyError, TypeError):
        return "meta.json unreadable or incomplete: cut short, or written by an older version"
    if shape != (len(meta["files"]), 3, size, size) or expected_bytes != math.prod(shape) or listed != sorted(files):
        return "meta.json does not describe these files"
    try:
        actual_bytes = (folder / "images.u8").stat().st_size
    except FileNotFoundError:
        return "images.u8 missing"
    if actual_bytes != expected_bytes:
        return f"images.u8 holds {actual_bytes:,} bytes, {expected_bytes:,} expected"
    if content_digest(folder / "images.u8", shape) != digest:
        return "images.u8 differs from its recorded digest"
    return None


def free_bytes(folder: Path) -> int:
    """Free space for this user on the disk that holds `folder`, or its nearest existing parent."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    return shutil.disk_usage(existing).free


def gigabytes(count: int) -> str:
    """A byte count for messages: GB, or MB below 0.1 GB so that small sizes do not all read 0.0 GB."""
    return f"{count / 1e9:,.1f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def reserve(path: Path, count: int) -> None:
    """Create `path` with `count` bytes allocated on disk, so that a full disk fails here with ENOSPC and not
    later as SIGBUS in a process writing into the memory-mapped file."""
    with open(path, "wb") as file:
        file.truncate(count)
        if hasattr(os, "posix_fallocate") and count:
            try:
                os.posix_fallocate(file.fileno(), 0, count)
            except OSError as error:
                if error.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # any other error (EOPNOTSUPP): this file system cannot reserve space; the free-space check stands


def compact(array_path: Path, shape: tuple, kept: list[int]) -> tuple:
    """Move the `kept` rows of the (N, 3, S, S) array together, in order, and cut the file after them, closing
    the gaps that skipped files left; returns the new shape."""
    array = np.memmap(array_path, dtype=np.uint8, mode="r+", shape=shape)
    for row, index in enumerate(kept):
        if row != index:
            array[row] = array[index]
    array.flush()
    del array
    kept_shape = (len(kept), *shape[1:])
    os.truncate(array_path, math.prod(kept_shape))
    return kept_shape


# ---------------------------------------------------------------- the cache


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/simsiam-cats-dogs, else ~/.cache/...; where no home folder is known (HOME unset and no
    passwd entry, as in some containers), a folder of this user's in the temporary directory."""
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "simsiam-cats-dogs"
    try:
        return Path.home() / ".cache" / "simsiam-cats-dogs"
    except (RuntimeError, KeyError):  # Path.home(): "Could not determine home directory"
        return Path(tempfile.gettempdir()) / f"simsiam-cats-dogs-{os.getuid() if hasattr(os, 'getuid') else 0}"


def cache_key(root: Path, files: list[str], size: int) -> str:
    """Changes when the file list, any file's size or times, the resolution or the decoding changes. A file's
    times include its inode's change time (ctime) and its inode number, which no copy can set: a photo replaced by
    another of the same size with its modification time restored (cp -p, rsync -t) changes them too. Names are
    hashed as the bytes the OS gave (os.fsencode), so a name that is not valid UTF-8 works too."""
    digest = hashlib.sha1(f"{decode.VERSION} {size}".encode())
    for name in files:
        try:
            stat = (root / name).stat()
            state = f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ctime_ns} {stat.st_ino}"
        except OSError:  # vanished since the listing: the build skips it and the next listing drops it
            state = "missing"
        digest.update(b"\n" + os.fsencode(name) + f" {state}".encode())
    return digest.hexdigest()[:16]


def build_cache(root: Path, files: list[str], size: int, folder: Path, workers: int) -> None:
    """Decode `files` into folder/images.u8 (kept images only, in order) and folder/meta.json, atomically: the
    work happens in a staging folder, renamed into place when complete and removed when the build fails or is
    interrupted. A full disk, a dead decoding process or a write error is a CacheError."""
    shape = (len(files), 3, size, size)
    needed = math.prod(shape)
    shutil.rmtree(folder, ignore_errors=True)  # a damaged cache in the way: its space counts as free
    where = f"the cache of {len(files):,} images at {size} px needs {gigabytes(needed)} in {folder.parent}"
    if needed > (free := free_bytes(folder.parent)):
        raise CacheError(f"{where}, which has {gigabytes(free)} free: pass --cache-dir on a disk with more space, "
                         f"or a smaller --cache-size")
    staging = staging_path(folder)
    try:
        staging.mkdir(parents=True, exist_ok=True)
        array_path = staging / "images.u8"
        reserve(array_path, needed)
        failures, decoded = decode_all(root, files, array_path, shape, workers)
        kept = [index for index in range(len(files)) if index not in failures]
        kept_shape = compact(array_path, shape, kept)
        meta = {"version": decode.VERSION, "root": str(root), "size": size, "shape": kept_shape,
                "bytes": math.prod(kept_shape), "digest": content_digest(array_path, kept_shape),
                "files": [files[i] for i in kept], "sides": [decoded[i][0] for i in kept],
                "hashes": [decoded[i][1] for i in kept],  # decode.perceptual_hash of each kept photo
                "skipped": {files[i]: kind for i, kind in sorted(failures.items())}}
        # json's ensure_ascii (the default) writes a name that is not UTF-8 as \udcXX escapes, read back unchanged
        (staging / "meta.json").write_text(json.dumps(meta))
        (staging / "skipped.txt").write_bytes(b"".join(os.fsencode(files[i]) + f"\t{kind}\n".encode()
                                                       for i, kind in sorted(failures.items())))
        shutil.rmtree(folder, ignore_errors=True)  # another run may have built it meanwhile
        os.replace(staging, folder)
    except BrokenProcessPool:
        raise CacheError(f"a decoding process died (killed for lack of memory, or SIGBUS from a full disk) with "
                         f"{workers} processes decoding; {where}, which has {gigabytes(free_bytes(folder.parent))} "
                         f"free: free memory or disk space, or pass fewer --workers, --cache-dir on a larger disk or "
                         f"a smaller --cache-size") from None
    except OSError as error:
        raise CacheError(f"cannot build the image cache ({error.strerror or error}); {where}, which has "
                         f"{gigabytes(free_bytes(folder.parent))} free: pass --cache-dir elsewhere, or a smaller "
                         f"--cache-size") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def open_cache(root: Path, files: list[str], size: int, cache_dir: Path,
               workers: int | None = None) -> tuple[Path, dict]:
    """(folder, meta) of the cache of `files` (relative to `root`) at `size` px: built when absent, rebuilt
    with a one-line warning on stderr when it fails its check. Removes abandoned staging folders first."""
    cache_dir = Path(cache_dir)
    remove_abandoned(cache_dir)
    # the folder's name, at most 64 bytes of it, makes the cache easy to find; the key tells caches apart (a name
    # of 240 bytes would take the cache's own name, and its staging name, over the 255 bytes a file system allows)
    label = os.fsdecode(os.fsencode(root.name)[:64])
    folder = cache_dir / f"{label}-{size}px-{cache_key(root, files, size)}"
    if not folder.exists():
        build_cache(root, files, size, folder, workers or os.cpu_count() or 1)
    elif (problem := cache_problem(folder, files, size)) is not None:
        print(f"cache {folder} is damaged ({problem}): rebuilding", file=sys.stderr)
        build_cache(root, files, size, folder, workers or os.cpu_count() or 1)
    return folder, json.loads((folder / "meta.json").read_bytes())
