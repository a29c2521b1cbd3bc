"""The cache is trusted only when whole, the build never hangs, any file name works, and a folder that fits
neither layout says what was found."""
from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image

from simsiam import cache, dataset, decode

REPOSITORY = Path(__file__).resolve().parents[1]
NOT_UTF8 = os.fsdecode(b"caf\xe9.jpg")  # a name Linux allows that is not valid UTF-8
needs_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                                reason="the patched decoder reaches the decoding processes by fork")


def dead_pid() -> int:
    """The id of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise TimeoutError in the main thread after `seconds`, so that a hang fails the test instead of stalling."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def rows_match_files(data: dataset.ImageSet) -> bool:
    size = data.images.shape[-1]
    return all(np.array_equal(data.images[row].numpy(),
                              decode.decode_image(data.root / name, size).transpose(2, 0, 1))
               for row, name in enumerate(data.files))


def write_non_utf8_name(path, contents: bytes | None = None) -> None:
    """An image (or `contents`) at `path`, or skip when this file system refuses the name."""
    try:
        if contents is None:
            write_image(path, seed=7)
        else:
            path.write_bytes(contents)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")


# ---------------------------------------------------------------- a damaged cache heals


def overwrite(path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


DAMAGES = {
    "images.u8 cut short": lambda folder: os.truncate(folder / "images.u8", 1000),
    "images.u8 missing": lambda folder: (folder / "images.u8").unlink(),
    "images.u8 overwritten, same size": lambda folder: overwrite(folder / "images.u8"),
    "meta.json empty": lambda folder: (folder / "meta.json").write_bytes(b""),
    "meta.json cut short": lambda folder: (folder / "meta.json").write_bytes((folder / "meta.json").read_bytes()[:99]),
    "meta.json missing": lambda folder: (folder / "meta.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_cache_is_reported_and_rebuilt(class_tree, cache_dir, capsys, damage):
    """A cache cut short, missing a file or overwritten is named in one warning line and rebuilt whole."""
    folder = dataset.load_images(class_tree, 24, cache_dir, workers=2).cache_path
    damage(folder)
    capsys.readouterr()
    data = dataset.load_images(class_tree, 24, cache_dir, workers=2)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"cache {folder} is damaged (")
    assert warnings[0].endswith("): rebuilding")
    assert data.cache_path == folder and len(data.files) == 60 and rows_match_files(data)


def test_abandoned_staging_is_removed(class_tree, cache_dir):
    """Staging folders and files of dead processes on this host are removed by the next run; those of live
    processes and of other hosts are kept."""
    dead, host = dead_pid(), socket.gethostname()
    abandoned = [cache_dir / f"PetImages-24px-0.building-{dead}",  # the older form, without a host
                 cache_dir / f"PetImages-24px-1.building-{host}-{dead}"]
    kept = [cache_dir / f"PetImages-24px-2.building-{host}-{os.getpid()}",
            cache_dir / f"PetImages-24px-3.building-another-host-{dead}"]
    for folder in abandoned + kept:
        folder.mkdir(parents=True)
        (folder / "images.u8").write_bytes(bytes(10))
    stray_file = cache_dir / f"meta.json.building-{dead}"
    stray_file.write_text("{")
    dataset.load_images(class_tree, 24, cache_dir, workers=2)
    assert not any(path.exists() for path in [*abandoned, stray_file]) and all(path.is_dir() for path in kept)


def test_abandoned_demo_staging_is_removed(tmp_path):
    """make_demo_images removes the staging folder a killed earlier call left beside its target."""
    stale = tmp_path / f"demo-data.building-{dead_pid()}"
    (stale / "disc").mkdir(parents=True)
    dataset.make_demo_images(tmp_path / "demo-data", per_class=2, size=16)
    assert not stale.exists() and sorted(os.listdir(tmp_path)) == ["demo-data"]


def test_interrupted_build_leaves_nothing(class_tree, cache_dir, monkeypatch):
    """Ctrl-C in the middle of decoding removes the staging folder and leaves no cache behind."""
    def interrupted(results, **_):
        yield next(iter(results))
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "tqdm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dataset.load_images(class_tree, 24, cache_dir, workers=2)
    assert list(cache_dir.iterdir()) == []


# ---------------------------------------------------------------- the build never hangs


@needs_fork
def test_dead_decoding_process_is_a_data_error(class_tree, cache_dir, monkeypatch):
    """A decoding process killed mid-build (as by the OOM killer) is a CacheError saying so, not a hang, and
    leaves no staging folder."""
    real_decode = decode.decode_file

    def killed_on_seven(path, size):
        if path.name == "7.jpg":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_decode(path, size)

    monkeypatch.setattr(decode, "decode_file", killed_on_seven)
    with deadline(60), pytest.raises(cache.CacheError, match="a decoding process died .* --workers"):
        dataset.load_images(class_tree, 24, cache_dir, workers=2)
    assert list(cache_dir.iterdir()) == []


@pytest.mark.slow
@needs_fork
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_decoding_processes_exit_with_the_main_one(class_tree, tmp_path):
    """kill -9 of the main process mid-build: its decoding processes exit too, instead of waiting for work for
    ever while holding the staging file's disk space."""
    script = textwrap.dedent(f"""
        import os, time
        from simsiam import dataset, decode
        def slow(path, size):
            open(os.path.join({str(tmp_path)!r}, f"worker-{{os.getpid()}}"), "w").close()
            time.sleep(0.5)
            raise ValueError("not decoded")
        decode.decode_file = slow
        dataset.load_images({str(class_tree)!r}, 24, {str(tmp_path / "cache")!r}, workers=2)
    """)
    errors = tmp_path / "main.err"
    with open(errors, "w") as stderr:
        main = subprocess.Popen([sys.executable, "-c", script], cwd=REPOSITORY, stderr=stderr,
                                env={**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"})
    until = time.time() + 60
    while len(workers := list(tmp_path.glob("worker-*"))) < 2 and time.time() < until:
        assert main.poll() is None, f"the main process ended before its workers started: {errors.read_text()}"
        time.sleep(0.05)
    main.kill()
    main.wait()
    pids = [int(path.name.split("-")[1]) for path in workers]
    until = time.time() + 20  # they look for their parent once a second
    while any(map(running, pids)) and time.time() < until:
        time.sleep(0.1)
    assert len(pids) == 2 and not any(map(running, pids))


def test_cache_larger_than_the_free_space_is_refused_first(class_tree, cache_dir, monkeypatch):
    """When the disk cannot hold N*3*S*S bytes, a CacheError names both sizes and --cache-dir, before any work."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(total=10**6, used=10**6, free=0))
    with pytest.raises(cache.CacheError, match=r"needs 0\.1 MB in .*, which has 0\.0 MB free: pass --cache-dir"):
        dataset.load_images(class_tree, 24, cache_dir, workers=2)  # 60 * 3 * 24 * 24 = 103,680 bytes
    assert not cache_dir.exists() or list(cache_dir.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="space is reserved with posix_fallocate")
def test_full_disk_during_the_build_is_a_data_error(class_tree, cache_dir, monkeypatch):
    """ENOSPC while writing the cache is a CacheError naming it, and leaves no staging folder."""
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(cache.CacheError, match=f"cannot build the image cache \\({os.strerror(errno.ENOSPC)}\\)"):
        dataset.load_images(class_tree, 24, cache_dir, workers=2)
    assert list(cache_dir.iterdir()) == []


@needs_fork
def test_file_deleted_during_the_build_is_skipped(class_tree, cache_dir, monkeypatch):
    """A file deleted between the listing and its decoding is skipped as 'vanished'; the build goes on."""
    real_decode = decode.decode_file

    def deleted_first(path, size):
        if path.parent.name == "Dog" and path.name == "3.jpg":
            path.unlink()
        return real_decode(path, size)

    monkeypatch.setattr(decode, "decode_file", deleted_first)
    data = dataset.load_images(class_tree, 24, cache_dir, workers=2)
    assert data.skipped == {"Dog/3.jpg": "vanished"} and len(data.files) == 59


# ---------------------------------------------------------------- any file name


def test_image_named_in_non_utf8_is_kept_and_cached(class_tree, cache_dir, monkeypatch):
    """An image whose name is not valid UTF-8 is decoded and kept, and a second load reuses the cache."""
    write_non_utf8_name(class_tree / "Cat" / NOT_UTF8)
    first = dataset.load_images(class_tree, 24, cache_dir, workers=2)
    monkeypatch.setattr(cache, "build_cache", lambda *a, **k: pytest.fail("cache rebuilt"))
    second = dataset.load_images(class_tree, 24, cache_dir, workers=2)
    assert f"Cat/{NOT_UTF8}" in first.files and len(first.files) == 61 and second.files == first.files


def test_bad_file_named_in_non_utf8_is_listed_by_its_bytes(class_tree, cache_dir):
    """An undecodable file whose name is not valid UTF-8 is skipped and listed in skipped.txt by its own bytes."""
    write_non_utf8_name(class_tree / "Dog" / NOT_UTF8, b"")
    data = dataset.load_images(class_tree, 24, cache_dir, workers=2)
    assert data.skipped == {f"Dog/{NOT_UTF8}": "empty file"}
    assert (data.cache_path / "skipped.txt").read_bytes() == b"Dog/caf\xe9.jpg\tempty file\n"


# ---------------------------------------------------------------- folders that fit neither layout


def test_loose_photos_are_refused_naming_the_layouts(tmp_path):
    """Loose photos without class folders or Kaggle names: a DataError naming an example and both layouts."""
    for i in range(3):
        write_image(tmp_path / "photos" / f"IMG_000{i}.jpg", seed=i)
    with pytest.raises(dataset.DataError, match=r"3 of its 3 images .*'IMG_0000.jpg'.*ROOT/<class>/<image>.*"
                                                r"ROOT/<class>\.<n>\.<ext>"):
        dataset.find_images(tmp_path / "photos")


def test_dotted_names_are_not_classes(tmp_path):
    """Dotted names that are not <class>.<n>.<ext> are refused, not read as one class per file."""
    write_image(tmp_path / "photos" / "my.holiday.photo.jpg", seed=1)
    write_image(tmp_path / "photos" / "our.trip.jpg", seed=2)
    with pytest.raises(dataset.DataError, match=r"not named <class>\.<n>\.<ext> \(e\.g\. 'my\.holiday\.photo\.jpg'\)"):
        dataset.find_images(tmp_path / "photos")


def test_folder_holding_only_the_class_tree_suggests_it(class_tree):
    """--data at the folder that holds PetImages: a DataError naming the one class folder, suggesting PetImages."""
    with pytest.raises(dataset.DataError, match=rf"1 class folder .*\('PetImages'\), 2 or more are needed: "
                                                rf"did you mean --data {re.escape(str(class_tree))}\?"):
        dataset.find_images(class_tree.parent)


def test_one_class_folder_given_as_data_suggests_its_parent(class_tree):
    """--data at PetImages/Cat, whose photos are loose files: a DataError suggesting PetImages."""
    with pytest.raises(dataset.DataError, match=rf"did you mean --data {re.escape(str(class_tree))}\?$"):
        dataset.find_images(class_tree / "Cat")


def test_no_suggestion_that_would_make_a_project_folder_the_classes(tmp_path):
    """Loose photos inside a project folder (code, plots, other photos beside them): the parent is not offered as
    --data, since following that would make every sibling folder a class."""
    for i in range(3):
        write_image(tmp_path / "project" / "myphotos" / f"IMG_{i}.jpg", seed=i)
        write_image(tmp_path / "project" / "results" / f"plot{i}.png", seed=10 + i)
    (tmp_path / "project" / "code").mkdir()
    (tmp_path / "project" / "code" / "train.py").write_text("")
    with pytest.raises(dataset.DataError) as refused:
        dataset.find_images(tmp_path / "project" / "myphotos")
    assert "did you mean" not in str(refused.value) and "train.py pretrains on loose photos" in str(refused.value)
    assert dataset.find_images(tmp_path / "project" / "myphotos", unlabelled=None)[2] == []  # train.py reads them


def test_kaggle_names_of_one_class_are_refused(tmp_path):
    """Kaggle names of a single class: a DataError naming the class found."""
    for i in range(3):
        write_image(tmp_path / "train" / f"cat.{i}.jpg", seed=i)
    with pytest.raises(dataset.DataError, match=r"1 class in the file names .*\('cat'\), 2 or more are needed"):
        dataset.find_images(tmp_path / "train")


def test_min_classes_one_reads_a_single_class(class_tree):
    """min_classes=1 reads a folder with one class folder (evaluation on a subset of the classes)."""
    shutil.rmtree(class_tree / "Dog")
    shutil.rmtree(class_tree / "Fox")
    files, labels, classes = dataset.find_images(class_tree, min_classes=1)
    assert classes == ["Cat"] and len(files) == 20 and set(labels) == {0}
