"""The experiments: their verdicts, tables and plot from small canned run folders (--report-only), running the scripts
(reuse, resume, failure, signals, a killed experiment) with tiny stand-in scripts, bad flags, results that git tracks,
quickstart.sh's check of .venv, and one tiny end-to-end run."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import evaluate
from experiments import check_machine, cpu_result, headline, runner
from model import UserError

LABELS = [0, 1] * 10  # 20 test images


def write_run(folder, correct: int, closed_form: int | None = None, labelled: int = 4, files=None):
    """A finished classifier run whose head gets the first `correct` test images right (the closed-form probe
    `closed_form`), as classifier.py leaves it; and a checkpoint, which is never copied to the results."""
    def predicted(n: int) -> list[int]:
        return [label if i < n else 1 - label for i, label in enumerate(LABELS)]
    folder.mkdir(parents=True)
    (folder / "predictions.json").write_text(json.dumps({
        "files": files or [f"{i}.png" for i in range(len(LABELS))], "labels": LABELS, "head": predicted(correct),
        **({} if closed_form is None else {"closed_form": predicted(closed_form)})}))
    (folder / "labelled.json").write_text(json.dumps({"files": [f"l{i}.png" for i in range(labelled)]}))
    (folder / "args.json").write_text("{}")
    (folder / "metrics.jsonl").write_text(json.dumps({"event": "final", "test_accuracy": correct / 20}) + "\n")
    (folder / "classifier.pt").write_bytes(b"weights")


def write_pretraining(folder):
    """A finished train.py run: its epochs' records, and a checkpoint."""
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "z_std": 0.02, "loss": -e}) + "\n"
                                                  for e in (1, 2)))
    (folder / "siam.pt").write_bytes(b"weights")


def test_cpu_result_verdict_over_label_draws(tmp_path, capsys):
    """From two label draws: per probe, the paired difference averaged over the draws is the mean of the draws'
    (each with its McNemar p), the verdict is the margin and 3 standard errors, and the JSON, the table with the
    verdicts and the small files (no checkpoints) are written."""
    write_pretraining(tmp_path / "runs" / "pretrain-seed0")
    for seed, (random, simsiam) in enumerate([(10, 18), (12, 13)]):
        write_run(tmp_path / "runs" / f"random-frozen-labels{seed}", random, closed_form=10)
        write_run(tmp_path / "runs" / f"simsiam-seed0-frozen-labels{seed}", simsiam, closed_form=11)
    cpu_result.main(["--report-only", "--label-seeds", "0", "1", "--runs", str(tmp_path / "runs"),
                     "--results", str(tmp_path / "results")])
    result = json.loads((tmp_path / "results" / "cpu-result.json").read_text())
    linear, closed_form = result["rows"]
    assert (linear["protocol"], closed_form["protocol"]) == ("linear probe", "closed-form probe")
    assert [d["difference"] for d in linear["per_draw"]] == pytest.approx([0.4, 0.05])
    assert linear["difference"] == pytest.approx(0.225) and 0 < linear["per_draw"][0]["mcnemar_p"] < 0.05
    assert closed_form["difference"] == pytest.approx(0.05)
    for row in result["rows"]:
        assert row["meets_target"] == (row["difference"] >= max(0.05, 3 * row["standard_error"]))
    assert linear["meets_target"] and not closed_form["meets_target"]
    assert result["pretraining"]["pretrain-seed0"]["epoch"] == 2
    table = (tmp_path / "results" / "cpu-result.md").read_text()
    assert "| linear probe | simsiam-seed0 | mean of 2 | 55.0% | 77.5% | +22.5 ±" in table
    assert "SimSiam beats random init" in table and "SimSiam does not beat random init" in table
    copied = {path.name for path in (tmp_path / "results" / "cpu-result").rglob("*")}
    assert {"predictions.json", "labelled.json", "metrics.jsonl"} <= copied
    assert not any(name.endswith(".pt") for name in copied)
    assert "| closed-form probe |" in capsys.readouterr().out


def test_runs_tested_on_other_images_refused(tmp_path, capsys):
    """Classifier runs that were not tested on the same images are not compared: one line, exit 2."""
    write_run(tmp_path / "runs" / "random-frozen-labels0", 10)
    write_run(tmp_path / "runs" / "simsiam-frozen-labels0", 10, files=[f"other{i}.png" for i in range(20)])
    with pytest.raises(SystemExit) as stop:
        cpu_result.main(["--report-only", "--label-seeds", "0", "--checkpoint", str(tmp_path / "siam.pt"),
                         "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
    assert stop.value.code == 2 and "not all tested on the same images" in capsys.readouterr().err


@pytest.fixture
def parsed(monkeypatch) -> list[list[str]]:
    """runner.run_all replaced: each command only parsed by its script's parse_args (which refuses a flag it lacks)
    and recorded; the checkpoint read for the resolution is a stand-in."""
    commands = []

    def parse_all(jobs, parallel=1):
        for command, log in jobs:
            importlib.import_module(command[0].removesuffix(".py")).parse_args(command[1:])
            commands.append(command)
    monkeypatch.setattr(runner, "run_all", parse_all)
    monkeypatch.setattr(evaluate, "read_pretrained", lambda path, hint: {"args": {"image_size": 32}})
    return commands


def test_headline_protocols_bound_and_spread_over_pretraining_seeds(tmp_path, parsed):
    """Each protocol (linear, closed-form, fine-tuned) is paired for each pretraining seed and, with --imagenet, for
    ImageNet weights (classifier.py --init imagenet); the spread over the pretraining seeds (not ImageNet's) and the
    supervised bound are in the JSON and the table. Every script accepts the command it is given."""
    folder = tmp_path / "runs"
    for seed in (0, 1):
        write_pretraining(folder / f"pretrain-seed{seed}")
        write_run(folder / f"simsiam-seed{seed}-frozen-labels0", 14 + seed, closed_form=12)
        write_run(folder / f"simsiam-seed{seed}-finetune-labels0", 16 + 2 * seed)
    write_run(folder / "random-frozen-labels0", 10, closed_form=10)
    write_run(folder / "random-finetune-labels0", 12)
    write_run(folder / "imagenet-frozen-labels0", 19, closed_form=20)
    write_run(folder / "imagenet-finetune-labels0", 20)
    write_run(folder / "supervised-all-labels", 19)
    headline.main(["--pretrain-seeds", "0", "1", "--label-seeds", "0", "--imagenet", "--runs", str(folder),
                   "--results", str(tmp_path / "results"), "--", "--epochs", "3"])
    assert [c[0] for c in parsed] == ["train.py"] * 2 + ["classifier.py"] * (1 + 2 * 4) + ["plot.py"]
    assert sum(c[c.index("--out") + 1].startswith(str(folder / "imagenet-")) and "imagenet" == c[c.index("--init") + 1]
               for c in parsed if "--init" in c) == 2
    assert parsed[0][-7:-1] == ["--epochs", "3", "--seed", "0", "--out", str(folder / "pretrain-seed0")]
    assert {"--random", "--finetune", "--all-labels"} <= set(parsed[2])  # the supervised bound, the longest, first
    assert all(c[c.index("--image-size") + 1] == "32" for c in parsed if c[0] == "classifier.py")
    result = json.loads((tmp_path / "results" / "headline.json").read_text())
    assert [(r["protocol"], r["backbone"]) for r in result["rows"]] == [
        (protocol, backbone) for protocol in runner.PROTOCOLS for backbone in ("simsiam-seed0", "simsiam-seed1",
                                                                                "imagenet")]
    assert result["rows"][2]["difference"] == pytest.approx(0.45)  # ImageNet's linear probe: 19 against 10 of 20
    spread = result["spread_over_pretraining_seeds"]["fine-tuned"]["difference"]
    assert (spread["min"], spread["max"], spread["mean"]) == pytest.approx((0.2, 0.3, 0.25))
    assert result["supervised_accuracy"] == 0.95
    table = (tmp_path / "results" / "headline.md").read_text()
    assert "| supervised bound, every label | | | 95.0% |" in table and "2 pretraining seeds" in table


@pytest.mark.parametrize("experiment, argv, message", [
    (cpu_result, ["--label-seeds", "0", "0"], "--label-seeds must differ from each other, got 0 0"),
    (headline, ["--pretrain-seeds", "x"], "argument --pretrain-seeds"),
    (headline, ["--parallel", "0"], "argument --parallel"),
    (check_machine, ["--devices", "cpu"], "unrecognized arguments"),
    (headline, ["--tiny", "--data", "/nonexistent"], "argument --data: not allowed with argument --tiny"),
])
def test_bad_flags_refused(experiment, argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        experiment.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


# A stand-in's SIGTERM handler: it writes 'stopped' to its first argument and ends, as train.py saves and ends
STOPS = ("def stop(number, frame):\n    pathlib.Path(sys.argv[1]).write_text('stopped')\n    sys.exit(128 + number)\n"
         "signal.signal(signal.SIGTERM, stop)\n")


def script(tmp_path, code: str):
    """A stand-in for a repository script: runner runs it as it runs train.py."""
    path = tmp_path / "script.py"
    path.write_text("import os, pathlib, signal, sys, time\n" + code)
    return str(path)


def test_a_finished_run_is_reused(tmp_path, capsys):
    """The same command again is not run again while its folder exists; another command runs."""
    command = [script(tmp_path, "open(sys.argv[-1], 'a').write('x')"), "--out", str(tmp_path), str(tmp_path / "n")]
    runner.run_all([(command, tmp_path / "job.log")] * 2)
    assert (tmp_path / "n").read_text() == "x" and "finished before, reused" in capsys.readouterr().out
    runner.run_all([([*command[:-1], "--epochs", "3", command[-1]], tmp_path / "job.log")])
    assert (tmp_path / "n").read_text() == "xx"


def test_an_unfinished_pretraining_resumes(tmp_path):
    """A command tried before that left OUT/last.pt runs with --resume in place of --overwrite."""
    out = tmp_path / "out"
    command = [script(tmp_path, "pathlib.Path(sys.argv[2], 'argv').write_text(' '.join(sys.argv[3:]))"),
               "--out", str(out), "--overwrite"]
    out.mkdir()
    runner.run_all([(command, tmp_path / "train.log")])
    assert (out / "argv").read_text() == "--overwrite"
    (tmp_path / "train.log").write_text(f"# python {' '.join(command)}\n")  # tried, not finished
    (out / "last.pt").write_bytes(b"")
    runner.run_all([(command, tmp_path / "train.log")])
    assert (out / "argv").read_text() == "--resume"


def test_a_failed_run_says_why_and_stops_the_rest(tmp_path):
    """A script that fails: a UserError with its last line and its log; the runs queued after it never start."""
    failing = [script(tmp_path, "print('error: no photos'); sys.exit(2)"), "--out", str(tmp_path)]
    with pytest.raises(UserError, match=r"first failed \(exit 2\): error: no photos \(log: "):
        runner.run_all([(failing, tmp_path / "first.log"), (failing, tmp_path / "second.log")])
    assert not (tmp_path / "second.log").exists()


def test_sigterm_reaches_the_running_script(tmp_path, capsys):
    """SIGTERM to the experiment goes on to its running script, which stops; the experiment then stops with exit
    143, saying how to go on, and its own signal handlers are put back."""
    before = signal.getsignal(signal.SIGTERM)
    child = script(tmp_path, STOPS + "os.kill(os.getppid(), signal.SIGTERM)\ntime.sleep(30)\n")
    main = runner.experiment(lambda argv: runner.run_all([([child, str(tmp_path / "flag"), "--out", str(tmp_path)],
                                                            tmp_path / "job.log")]))
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 143 and (tmp_path / "flag").read_text() == "stopped"
    assert "run the same command again" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("runs_after", [True, False])
def test_sigterm_while_no_script_runs_stops_the_experiment(tmp_path, capsys, runs_after):
    """A SIGTERM to the experiment between its runs (or while it reads the results) stops it: no later run starts,
    and it exits 143 saying how to go on, at the latest when its main ends."""
    command = [script(tmp_path, "open(sys.argv[-1], 'w')"), "--out", str(tmp_path), str(tmp_path / "ran")]

    def main(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        runner.run_all([(command, tmp_path / "job.log")] * runs_after)
    with pytest.raises(SystemExit) as stop:
        runner.experiment(main)([])
    assert stop.value.code == 143 and not (tmp_path / "ran").exists()
    assert "run the same command again" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_no_script_outlives_a_killed_experiment(tmp_path):
    """An experiment killed by SIGKILL (no handler of its own runs) leaves no script running: its running script
    gets SIGTERM, as from a stopped experiment, and saves and ends."""
    flag = tmp_path / "flag"
    child = script(tmp_path, STOPS + "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\ntime.sleep(60)\n")
    experiment = subprocess.Popen([sys.executable, "-c", "import sys\nfrom experiments import runner\nrunner.run_all("
                                   f"[({[child, str(flag), '--out', str(tmp_path)]!r}, runner.Path(sys.argv[1]))])",
                                   str(tmp_path / "job.log")], cwd=runner.REPOSITORY)
    deadline = time.monotonic() + 60
    while not (flag.is_file() and flag.read_text()) and experiment.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid, deadline = flag.read_text(), time.monotonic() + 10  # the script runs, in a thread of the experiment
    experiment.kill()
    while flag.read_text() != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    if flag.read_text() != "stopped":
        os.kill(int(pid), signal.SIGKILL)
    assert flag.read_text() == "stopped" and experiment.wait() == -signal.SIGKILL


def test_results_where_git_tracks_files_refused(tmp_path, monkeypatch, capsys):
    """--results is RUNS/results unless given; RESULTS/NAME* that git tracks in the repository (its results/) is
    refused in one line before anything runs, unless --replace-tracked; without git nothing counts as tracked."""
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    repository, runs_folder = tmp_path / "repository", tmp_path / "runs"
    (repository / "results").mkdir(parents=True)
    (repository / "results" / "cpu-result.md").write_text("the committed result\n")
    subprocess.run(["git", "init", "-q", str(repository)], check=True)
    subprocess.run(["git", "add", "results"], cwd=repository, check=True)
    monkeypatch.setattr(runner, "REPOSITORY", repository)
    assert cpu_result.parse_args(["--runs", str(runs_folder)]).results == runs_folder / "results"
    argv = ["--report-only", "--runs", str(runs_folder), "--results", str(repository / "results")]
    with pytest.raises(SystemExit) as stop:
        cpu_result.main(argv)
    assert stop.value.code == 2 and not runs_folder.exists()
    assert "git tracks results/cpu-result.md ..." in capsys.readouterr().err
    assert headline.parse_args(argv) and cpu_result.parse_args([*argv, "--replace-tracked"])  # NAME*: headline*
    monkeypatch.setenv("PATH", "")
    assert cpu_result.parse_args(argv)


def test_quickstart_refuses_a_venv_whose_torchvision_does_not_import(tmp_path):
    """quickstart.sh does not reuse a .venv where torchvision does not import (built for another torch): one line
    saying why and how to fix it, exit 1, nothing run."""
    (tmp_path / "experiments").mkdir()
    shutil.copy(runner.REPOSITORY / "experiments" / "quickstart.sh", tmp_path / "experiments")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho 'RuntimeError: operator torchvision::nms does not exist' >&2\nexit 1\n")
    python.chmod(0o755)
    done = subprocess.run(["bash", str(tmp_path / "experiments" / "quickstart.sh")], capture_output=True, text=True)
    assert done.returncode == 1 and not done.stdout and not (tmp_path / "runs").exists()
    assert done.stderr.count("\n") == 1 and "torchvision::nms does not exist" in done.stderr
    assert "rm -rf .venv" in done.stderr


@pytest.mark.slow
def test_cpu_result_tiny_end_to_end(tmp_path, capsys):
    """--tiny runs train.py, classifier.py over both backbones and plot.py as a user would, and writes the results;
    --budgets 1 adds the backbone after epoch 1 of the same pretraining and the curve; a second try reuses every
    finished run."""
    argv = ["--tiny", "--label-seeds", "0", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--budgets", "1"]
    cpu_result.main(argv)
    result = json.loads((tmp_path / "results" / "cpu-result.json").read_text())
    assert [row["num_test"] for row in result["rows"]] == [50] * 4 and result["pretraining"]["pretrain-seed0"]
    assert [(row["backbone"], row["epoch"]) for row in result["rows"]][:2] == [("simsiam-seed0-epoch1", 1),
                                                                                ("simsiam-seed0", 2)]
    assert 0 < result["rows"][0]["minutes"] < result["rows"][1]["minutes"]
    copied = {path.name for path in (tmp_path / "results" / "cpu-result").rglob("*")}
    assert {"predictions.json", "simsiam.png", "classifier.png"} <= copied
    assert not any(name.endswith(".pt") for name in copied) and (tmp_path / "results" / "cpu-result-curve.png").stat()
    capsys.readouterr()
    cpu_result.main(argv)
    assert capsys.readouterr().out.count("finished before, reused") == 5


def test_check_machine_runs_each_step_and_says_why_one_failed(tmp_path, monkeypatch):
    """Each step's command is one its script accepts, run in turn (the stop with SIGTERM once the run has begun); a
    step that fails says why, one whose input is missing is not run, the JSON lists every step, and the exit is 1.
    (The real check, `check_machine --device cpu --tiny`, takes 30 s: it is the first run on a GPU, not a test.)"""
    scripts = []

    def fake_run(command, log, stop_when=None, shown=None):
        importlib.import_module(command[0].removesuffix(".py")).parse_args(command[1:])  # refuses a flag it lacks
        scripts.append(command[0])
        if command[0] == "train.py" and stop_when is None:
            (tmp_path / "pretrain").mkdir(exist_ok=True)
            (tmp_path / "pretrain" / "siam.pt").write_bytes(b"not a checkpoint")
        log.write_text("error: something\n")
        return 2 if command[0] == "bench.py" else 128 + signal.SIGTERM if stop_when else 0
    monkeypatch.setattr(runner, "run", fake_run)
    assert check_machine.main(["--device", "cpu", "--tiny", "--runs", str(tmp_path)]) == 1
    rows = {row["step"]: row for row in json.loads((tmp_path / "check-machine.json").read_text())["rows"]}
    assert scripts == ["bench.py", "train.py", "train.py", "classifier.py"]
    assert rows["bench"]["error"] == "exit 2: error: something" and not rows["stop"]["passed"]
    assert rows["resume"]["error"].startswith("not run: no ") and rows["resume"]["error"].endswith("last.pt")
    assert list(rows) == ["bench", "pretrain", "stop", "resume", "classifier", "predict"]
