"""runs.py: flags and their ranges, the one-line error report and its exit codes, the run folder (check_out, the
--overwrite promise), records (args.json, metrics.jsonl), devices and the torchrun helpers."""
from __future__ import annotations

import argparse
import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, REPOSITORY
from emulated_cuda import emulated_cuda

import runs
from model import UserError


def build_parser(resumable: bool = True) -> argparse.ArgumentParser:
    """A script's parser as the scripts build it, with a --cpu preset flag and a float flag of its own."""
    parser = argparse.ArgumentParser()
    runs.add_data_arguments(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--cpu", action="store_true")
    group.add_argument("--lr", type=runs.positive(float), default=0.05)
    group.add_argument("-b", "--batch-size", type=runs.batch_size, default=256)
    group.add_argument("--image-size", type=runs.image_size, default=64)
    runs.add_output_arguments(group, Path("runs/x"), resumable)
    runs.add_run_arguments(group)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    return runs.parse(build_parser(), argv, demo={"labels": 40, "image_size": 32}, cpu={"image_size": 48})


ACTIONS = {}  # what `script` does after parsing, set by each test


@runs.reports_errors
def script(argv=None):
    """A script's main: parses, then runs `argv`'s action."""
    args = parse(argv[1:])
    return ACTIONS[argv[0]](args)


def exit_of(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of `script(argv)`."""
    with pytest.raises(SystemExit) as stop:
        script(argv)
    return stop.value.code, capsys.readouterr().err


# ---------------------------------------------------------------- flags

BAD_FLAGS = [  # (argv, a fragment of the one-line error)
    (["--seed", "-1"], "must be finite and >= 0"), (["--seed", str(2 ** 32)], "--seed"),
    (["--split-seed", "x"], "invalid"), (["--test-fraction", "0"], "> 0 and < 1"), (["--test-fraction", "1"], "< 1"),
    (["--val-fraction", "1"], "--val-fraction"), (["--labels", "0"], "> 0"), (["--limit", "-3"], "--limit"),
    (["--workers", "0"], "--workers"), (["--cache-size", "8"], ">= 16"), (["--image-size", "8"], ">= 16"),
    (["-b", "1"], ">= 2"), (["--lr", "nan"], "finite"), (["--lr", "inf"], "finite"), (["--lr", "0"], "> 0"),
    (["--precision", "fp8"], "invalid choice"), (["--overwrite", "--resume"], "not allowed with"),
    (["--demo", "--cpu"], "two presets"), (["--demo", "--data", "photos"], "would ignore --data")]


@pytest.mark.parametrize("argv, fragment", BAD_FLAGS)
def test_a_bad_flag_is_one_line_and_exit_2(argv, fragment, capsys):
    """Each value outside its range (or flags that contradict) stops at parsing: argparse's error names the flag
    and says the valid range, exit 2."""
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and fragment in error and error.startswith(f"{Path(sys.argv[0]).name}: error:")


def test_demo_and_cpu_presets_are_defaults_that_flags_override():
    """--demo sets DEMO_SPLITS and the script's demo preset, --cpu its cpu preset; an explicit flag still wins."""
    assert parse([]).image_size == 64 and parse([]).test_fraction == 0.1
    demo = parse(["--demo", "--labels", "10"])
    assert (demo.labels, demo.image_size, demo.test_fraction, demo.val_fraction) == (10, 32, 0.25, 0.1)
    assert parse(["--cpu"]).image_size == 48 and parse(["--cpu", "--image-size", "20"]).image_size == 20


def test_help_gives_defaults_and_units():
    """--help states the defaults and units users rely on."""
    text = " ".join(build_parser().format_help().split())
    assert "(default: 0.1)" in text and "in px" in text and "fp16 with a gradient scaler" in text
    assert "--resume or --overwrite" in text and "--resume" not in build_parser(False).format_help()


def raiser(error: BaseException):
    def action(args):
        raise error
    return action


@pytest.mark.parametrize("error, status, line", [
    (UserError("--labels 1 is too few"), 2, "error: --labels 1 is too few"),
    (OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl"), 2,
     "error: cannot write runs/x/metrics.jsonl: No space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "out"), 2, "error: cannot write out: Read-only file system"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (runs.Interrupted("interrupted (SIGTERM): saved last.pt", signal.SIGTERM), 128 + signal.SIGTERM,
     "interrupted (SIGTERM): saved last.pt")])
def test_errors_end_in_one_line_and_their_exit_status(error, status, line, capsys):
    """A UserError and a write refused for want of space: `error: ...`, exit 2; Ctrl-C exit 130; a stop after
    saving its message and 128 + the signal. One line on stderr, never a traceback."""
    ACTIONS["fail"] = raiser(error)
    assert exit_of(["fail"], capsys) == (status, line + "\n")


def test_other_os_errors_keep_their_traceback(capsys):
    """An OSError that is not a full or read-only disk is a bug or a case to handle where it happens: it propagates."""
    ACTIONS["fail"] = raiser(OSError(errno.EBADF, "Bad file descriptor"))
    with pytest.raises(OSError):
        script(["fail"])


def test_under_torchrun_the_line_names_the_rank(monkeypatch, capsys):
    """Under torchrun with several processes each error line says which rank wrote it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    ACTIONS["fail"] = raiser(UserError("stopped"))
    assert exit_of(["fail"], capsys) == (2, "rank 1: error: stopped\n")


def test_names_that_are_not_utf8_print_as_escapes(monkeypatch, capsys):
    """A file name that is not UTF-8 (a lone surrogate in Python) and, on an ASCII console, any other character
    print as escapes instead of raising UnicodeEncodeError."""
    name = os.fsdecode(b"caf\xe9.jpg")
    ACTIONS["print"] = lambda args: print(name, "\u2192 \u00b1")
    script(["print"])
    assert capsys.readouterr().out == "caf\\udce9.jpg \u2192 \u00b1\n"
    console = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", console)
    script(["print"])
    console.flush()
    assert console.buffer.getvalue() == b"caf\\udce9.jpg \\u2192 \\xb1\n"


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(tmp_path):
    """script | head -1: the reader closes the pipe after a line; no traceback, nothing more on stderr."""
    code = ("import runs\n@runs.reports_errors\ndef main(argv=None):\n"
            "    for i in range(100000): print('a line', i)\nmain()\n")
    finished = subprocess.run(f"{PYTHON} -c \"{code}\" | head -1", shell=True, capture_output=True, text=True,
                              cwd=REPOSITORY, timeout=120)
    assert finished.stdout == "a line 0\n" and finished.stderr == "", finished.stderr


# ---------------------------------------------------------------- run folders


def files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def write_run(folder: Path) -> dict[str, bytes]:
    """A finished run's folder, TensorBoard events and a file of the user's beside the run's files."""
    for name in ("args.json", "metrics.jsonl", "last.pt", "siam.pt", "backbone.pt", "notes.txt",
                 "tensorboard/events.out.tfevents.1.host"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"old {name}")
    return files(folder)


def test_a_folder_holding_a_run_is_refused_and_untouched(tmp_path):
    """check_out refuses a folder holding another run, offering --resume (where it can continue), another --out
    and --overwrite; nothing changes."""
    before = write_run(tmp_path / "run")
    with pytest.raises(UserError, match="already holds a run .*continue it with --resume, choose another --out, or "
                                        "pass --overwrite"):
        runs.check_out(tmp_path / "run", resumable=True)
    with pytest.raises(UserError, match=r"\(args.json, metrics.jsonl, siam.pt, last.pt, backbone.pt, tensorboard\): "
                                        "choose another --out"):
        runs.check_out(tmp_path / "run")
    assert files(tmp_path / "run") == before


def test_check_out_says_what_a_run_replaces_and_changes_nothing(tmp_path):
    """--overwrite: the run files held; --resume into the same folder: none (it continues them); a new folder is
    not created; --resume without a checkpoint is refused."""
    before = write_run(tmp_path / "run")
    assert runs.check_out(tmp_path / "run", overwrite=True) == ["args.json", "metrics.jsonl", "siam.pt", "last.pt",
                                                                "backbone.pt", "tensorboard"]
    assert runs.check_out(tmp_path / "run", resume_from=tmp_path / "run" / "last.pt", resumable=True) == []
    assert runs.check_out(tmp_path / "new" / "run") == [] and not (tmp_path / "new").exists()
    with pytest.raises(UserError, match="nothing to resume: .*missing.pt does not exist"):
        runs.check_out(tmp_path / "other", resume_from=tmp_path / "missing.pt")
    assert files(tmp_path / "run") == before


def test_an_out_that_is_a_file_or_below_one_is_refused(tmp_path):
    """--out naming a file, or a folder below a file, is refused before any work, saying it is a file."""
    (tmp_path / "a-file").write_text("")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "run"):
        with pytest.raises(UserError, match="--out .*a-file is a file, not a folder"):
            runs.check_out(out)


def test_an_unwritable_out_is_refused(tmp_path, monkeypatch):
    """An --out that cannot be written is refused before any work, not at the first save."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a folder of another user's
    with pytest.raises(UserError, match="cannot be written; choose another --out"):
        runs.check_out(tmp_path / "run")


def test_resume_checkpoint_names_the_file():
    """--resume continues OUT/last.pt; --resume PATH continues PATH; without --resume there is none."""
    out = Path("runs/x")
    assert runs.resume_checkpoint(None, out) is None and runs.resume_checkpoint(True, out) == out / "last.pt"
    assert runs.resume_checkpoint(Path("elsewhere/last.pt"), out) == Path("elsewhere/last.pt")


def overwrite_then(tmp_path: Path, action) -> None:
    """What a script's main does under --overwrite: check, start, write its first files, then `action`."""
    def run(args):
        held = runs.check_out(tmp_path / "run", overwrite=True)
        runs.start_run(tmp_path / "run", held)
        runs.save_args(tmp_path / "run", args)
        runs.log(tmp_path / "run" / "metrics.jsonl", epoch=1, loss=float("nan"))
        action()
    ACTIONS["overwrite"] = run


def test_an_overwrite_that_fails_before_its_first_checkpoint_leaves_the_old_run(tmp_path, capsys):
    """The promise: an --overwrite run that fails before its first good checkpoint (a non-finite loss at step 2)
    ends in one line, and the old run is back byte for byte; the user's own files were never moved."""
    before = write_run(tmp_path / "run")

    def non_finite():
        assert not (tmp_path / "run" / "siam.pt").exists() and (tmp_path / "run" / "notes.txt").exists()
        raise UserError("non-finite loss at epoch 1, step 2: stopped, no checkpoint was saved")
    overwrite_then(tmp_path, non_finite)
    status, error = exit_of(["overwrite"], capsys)
    assert status == 2 and error.startswith("error: non-finite loss") and "is back as it was" in error
    assert files(tmp_path / "run") == before


def test_an_overwrite_that_is_interrupted_before_its_first_checkpoint_leaves_the_old_run(tmp_path, capsys):
    before = write_run(tmp_path / "run")
    def ctrl_c():
        raise KeyboardInterrupt
    overwrite_then(tmp_path, ctrl_c)
    assert exit_of(["overwrite"], capsys)[0] == 130 and files(tmp_path / "run") == before


def test_the_old_run_goes_at_the_first_good_checkpoint(tmp_path, capsys):
    """After keep_run the old run's files are gone, the new run's stay, even if the run fails later."""
    write_run(tmp_path / "run")

    def checkpoint_then_fail():
        (tmp_path / "run" / "last.pt").write_text("new")
        runs.keep_run(tmp_path / "run")
        raise UserError("a later failure")
    overwrite_then(tmp_path, checkpoint_then_fail)
    assert exit_of(["overwrite"], capsys)[0] == 2
    assert sorted(files(tmp_path / "run")) == ["args.json", "last.pt", "metrics.jsonl", "notes.txt"]
    assert (tmp_path / "run" / "last.pt").read_text() == "new"


def test_a_run_an_overwrite_killed_set_aside_is_never_deleted(tmp_path):
    """A process killed between setting the old run aside and its first checkpoint leaves OUT/.replaced: the next
    run into that folder is refused, naming it, and it is left as it is."""
    write_run(tmp_path / "run")
    runs.start_run(tmp_path / "run", runs.check_out(tmp_path / "run", overwrite=True))
    runs._replacing.clear()  # what kill -9 does: nothing puts it back
    aside = files(tmp_path / "run" / runs.REPLACED)
    with pytest.raises(UserError, match=r"\.replaced holds the run that a killed --overwrite was replacing"):
        runs.check_out(tmp_path / "run", overwrite=True)
    assert files(tmp_path / "run" / runs.REPLACED) == aside


# ---------------------------------------------------------------- records


def test_args_json_holds_the_resolved_arguments_protocol_code_and_environment(tmp_path):
    """args.json: the resolved arguments (presets applied, paths as strings), derived values, the protocol, the git
    commit and dirty flag, and the environment of the device (Pillow and NumPy too: they make the cached pixels)."""
    args = parse(["--demo", "--out", str(tmp_path)])
    runs.save_args(tmp_path, args, device_used="cpu", image_size_used=32)
    record = json.loads((tmp_path / "args.json").read_text())
    assert record["out"] == str(tmp_path) and record["labels"] == 40 and record["image_size_used"] == 32
    assert record["protocol"] == runs.PROTOCOL and set(record["code_version"]) == {"commit", "dirty"}
    assert set(record["environment"]) == {"python", "torch", "torchvision", "pillow", "numpy", "cuda", "device", "cpu"}
    assert record["environment"]["device"].startswith("cpu")


def test_config_reruns_a_record_with_the_flags_given_winning(tmp_path, capsys):
    """--config ARGS_JSON: the recorded flags (less --resume and --overwrite) are the defaults, over the presets' (the
    record of `--demo --labels 8` keeps 8, not the preset's 40); flags given win; a flag this version lacks is named."""
    recorded = parse(["--demo", "--labels", "8", "--out", str(tmp_path / "a"), "--overwrite"])
    runs.save_args(tmp_path, recorded, device_used="cpu")
    again = parse(["--config", str(tmp_path / "args.json")])
    assert {**vars(again), "config": None, "overwrite": True} == vars(recorded) and again.labels == 8
    assert parse(["--config", str(tmp_path / "args.json"), "--labels", "12"]).labels == 12
    record = json.loads((tmp_path / "args.json").read_text())
    record.update(flags=[*record["flags"], "retired_flag"], retired_flag=3)
    (tmp_path / "args.json").write_text(json.dumps(record))
    assert vars(parse(["--config", str(tmp_path / "args.json")])) == vars(again)
    assert "this version has no flag for retired_flag: not used" in capsys.readouterr().err


def test_metrics_are_flushed_per_record_and_read_back_past_a_cut_line(tmp_path):
    """Each record is on disk as soon as it is logged; a line cut short by a kill, or a line that is not an
    object, is skipped by read_jsonl; the last "final" record is the run's result."""
    metrics = tmp_path / "metrics.jsonl"
    runs.log(metrics, epoch=1, loss=-0.5)
    assert runs.read_jsonl(tmp_path / "metrics.jsonl")[0]["loss"] == -0.5
    runs.log(metrics, event="final", test_accuracy=0.75, num_test=8)
    with open(tmp_path / "metrics.jsonl", "a") as file:
        file.write('3\n"text"\n{"epoch": 3, "loss"')
    records = runs.read_jsonl(tmp_path / "metrics.jsonl")
    assert [record.get("epoch") for record in records] == [1, None] and "time" in records[0]
    assert runs.final_record(tmp_path / "metrics.jsonl")["test_accuracy"] == 0.75


def test_truncate_metrics_drops_the_epochs_a_resume_writes_again(tmp_path):
    """A resume from epoch 1 drops the records of later epochs and events, which the resumed run writes again."""
    metrics = tmp_path / "metrics.jsonl"
    for epoch in (1, 2, 3):
        runs.log(metrics, epoch=epoch, loss=float(epoch))
    runs.log(metrics, event="ranks", world_size=2)
    runs.log(metrics, epoch="2", loss=0.5)  # not of this code's making: dropped, not a TypeError
    runs.truncate_metrics(tmp_path / "metrics.jsonl", after_epoch=1)
    assert [record.get("epoch") for record in runs.read_jsonl(tmp_path / "metrics.jsonl")] == [1, None]
    assert runs.final_record(tmp_path / "metrics.jsonl") is None


def test_unreadable_predictions_are_one_line(tmp_path):
    """A predictions.json cut short, or none, is a UserError naming the folder."""
    (tmp_path / "predictions.json").write_text('{"files": [')
    with pytest.raises(UserError, match="holds no readable predictions.json"):
        runs.read_predictions(tmp_path)
    with pytest.raises(UserError, match="holds no readable predictions.json"):
        runs.read_predictions(tmp_path / "missing")


def test_stop_signals_only_record_the_signal_within_with():
    """SIGTERM within `with` sets signal_number instead of ending the process; the handler before is restored."""
    previous = signal.getsignal(signal.SIGTERM)
    with runs.StopSignals() as stop:
        assert stop.signal_number is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_number == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous


def test_names_and_protocol():
    """Default classifier folders differ per backbone, mode and --all-labels; a checkpoint of another protocol is
    refused."""
    names = {runs.classifier_run_name(backbone, finetune, all_labels) for backbone in ("simsiam", "random")
             for finetune in (False, True) for all_labels in (False, True)}
    assert len(names) == 8 and runs.classifier_run_name("simsiam", False) == "classifier-simsiam-frozen"
    runs.check_protocol({"protocol": runs.PROTOCOL}, Path("siam.pt"))
    with pytest.raises(UserError, match="siam.pt was pretrained under evaluation protocol 1"):
        runs.check_protocol({}, Path("siam.pt"))


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("flags, image_size, chosen", [(set(), 64, "fp32"), ({"amx_bf16", "avx2"}, 64, "bf16"),
                                                       ({"avx512_bf16"}, 224, "bf16"), ({"amx_bf16"}, 32, "fp32"),
                                                       ({"amx_bf16"}, None, "fp32")])
def test_auto_precision_on_a_cpu_is_bf16_with_bf16_units_at_64_px_or_more(monkeypatch, flags, image_size, chosen):
    """auto on a CPU: bf16 where /proc/cpuinfo names AMX or AVX512-BF16 and the views are 64 px or more, else
    fp32 in the default layout; the reason names the units."""
    monkeypatch.setattr(runs, "cpuinfo", lambda key: " ".join(flags) if key == "flags" else "")
    runtime = runs.make_runtime("cpu", image_size=image_size)
    assert runtime.precision == chosen and all(unit in runtime.reason for unit in sorted(flags - {"avx2"}))
    assert runtime.memory_format == (torch.channels_last if chosen == "bf16" else torch.contiguous_format)
    assert not runtime.scaler.is_enabled()


def test_cpu_runtime_precision_and_layout():
    """The CPU's flags are read (this machine's include fpu); bf16 asked on a CPU autocasts and is channels_last
    (oneDNN)."""
    assert "fpu" in runs.cpuinfo("flags").split() or not Path("/proc/cpuinfo").exists()
    runtime = runs.make_runtime("cpu", "fp32")
    assert (runtime.device, runtime.precision, runtime.reason) == (torch.device("cpu"), "fp32", "as asked")
    assert runtime.memory_format == torch.contiguous_format and runtime.context == runs.Context()
    bf16 = runs.make_runtime("auto", "bf16")
    assert bf16.memory_format == torch.channels_last
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


@pytest.mark.parametrize("name, fragment", [("cuda", "sees no CUDA GPU"), ("tpu7", "--device tpu7"),
                                            ("cuda:x", "--device cuda:x")])
def test_a_device_this_machine_lacks_is_a_user_error(name, fragment):
    """--device cuda without a GPU, or a name torch does not know: one line naming the flag, not a traceback."""
    with pytest.raises(UserError, match=fragment):
        runs.make_runtime(name)


def test_cuda_devices_are_concrete_and_default_to_bf16_channels_last():
    """auto and cuda are the current GPU, cuda:0, never a bare cuda; cuda:1 itself; a GPU beyond the count is
    refused; generators are made on the device."""
    with emulated_cuda(device_count=2):
        for name, index in (("auto", 0), ("cuda", 0), ("cuda:1", 1)):
            runtime = runs.make_runtime(name)
            assert runtime.device == torch.device("cuda", index) and runtime.precision == "bf16"
            assert runtime.memory_format == torch.channels_last and "compute capability 9.0" in runtime.reason
        assert runs.make_runtime("cuda", "fp32").precision == "fp32"
        assert runs.generator(torch.device("cuda", 0), 3).device == torch.device("cuda", 0)
        assert runs.describe(torch.device("cuda", 0)) == "emulated (cuda:0)"
        with pytest.raises(UserError, match="--device cuda:2"):
            runs.make_runtime("cuda:2")


def test_cpu_device_helpers():
    """On a CPU: synchronize and the peak-memory reset do nothing, the peak is the resident memory, a generator
    of a seed repeats."""
    cpu = torch.device("cpu")
    runs.synchronize(cpu, reset_peak_memory=True)
    assert runs.peak_memory_gb(cpu) > 0 and runs.describe(cpu).startswith("cpu (")
    assert torch.equal(torch.rand(3, generator=runs.generator(cpu, 5)), torch.rand(3, generator=runs.generator(cpu, 5)))


# ---------------------------------------------------------------- torchrun


def test_a_single_process_needs_no_process_group(monkeypatch):
    """Without torchrun (or with one process) setup joins nothing, and every collective is the identity."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context, device = runs.setup("cuda:1")
    assert (context, device) == (runs.Context(), "cuda:1") and context.is_main and not context.is_distributed
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert runs.setup("auto") == (runs.Context(), "auto")
    value, model = torch.tensor(2.0), torch.nn.Linear(2, 2)
    runs.barrier(context)
    assert runs.mean(value, context) is value
    assert runs.any_rank(True, torch.device("cpu"), context) and not runs.any_rank(False, torch.device("cpu"), context)
    assert runs.wrap(model, context, torch.device("cpu")) is model
    runs.cleanup(context)


@pytest.mark.parametrize("device", ["cuda:1", "mps"])
def test_a_device_torchrun_would_not_use_is_refused_before_joining(device, monkeypatch):
    """Under torchrun each process takes cuda:LOCAL_RANK: --device cuda:1 would be overridden and mps would fall
    back to the CPU without a word. Refused before the process group is joined, saying what to pass."""
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runs.dist, "init_process_group", lambda *a, **k: pytest.fail("joined"))
    with pytest.raises(UserError, match="pass --device cuda .*CUDA_VISIBLE_DEVICES"):
        runs.setup(device)


def test_torchrun_on_cpus_joins_gloo_with_its_rank(monkeypatch):
    """Under torchrun on CPUs each process joins gloo with the RANK, WORLD_SIZE and LOCAL_RANK torchrun set."""
    joined = []
    for name, value in (("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(runs.dist, "init_process_group", lambda backend, **kwargs: joined.append(backend))
    context, device = runs.setup("cpu")
    assert (context, device, joined) == (runs.Context(3, 4, 1), "cpu", ["gloo"]) and not context.is_main


def test_a_dead_peer_at_a_barrier_is_one_line(monkeypatch):
    """gloo's "Connection closed by peer" at a barrier (another process stopped first, with its own line) becomes
    a UserError, so that this process too ends in one line."""
    def closed():
        raise RuntimeError("Connection closed by peer")
    monkeypatch.setattr(runs.dist, "barrier", closed)
    with pytest.raises(UserError, match="another process of this run ended first"):
        runs.barrier(runs.Context(1, 2, 1))


def test_auto_precision_on_a_gpu_without_bf16_is_fp16_with_a_scaled_step(monkeypatch):
    """On an emulated compute capability 7.5 GPU (T4, RTX 20xx), auto is fp16 autocast with an enabled gradient
    scaler; a step through it moves the weights, and one of infinite gradients is skipped, the scale lowered."""
    with emulated_cuda():
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
        runtime = runs.make_runtime("cuda")
        assert (runtime.precision, runtime.scaler.is_enabled()) == ("fp16", True) and "7.5" in runtime.reason
        layer = torch.nn.Linear(4, 2).to(runtime.device)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        with runtime.autocast():
            output = layer(torch.ones(3, 4, device=runtime.device))
        assert output.dtype == torch.float16
        before, scale = layer.weight.detach().clone(), runtime.scaler.get_scale()
        runtime.backward_step(output.float().mean(), optimizer)
        assert not torch.equal(layer.weight.detach(), before)
        moved = layer.weight.detach().clone()
        runtime.backward_step(layer(torch.full((3, 4), float("inf"), device=runtime.device)).sum(), optimizer)
        assert torch.equal(layer.weight.detach(), moved) and runtime.scaler.get_scale() < scale
