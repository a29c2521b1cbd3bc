"""A two-minute end-to-end check of a machine: does every script of the repository run here, and how fast?

    python -m experiments.check_machine                       # the GPU (auto device), about two minutes
    python -m experiments.check_machine --device cuda:1       # another GPU
    python -m experiments.check_machine --device cpu --tiny   # CPU smoke run, as in CI

On the generated demo set (800 images, no download), one subprocess per step, as a user would run them:
    bench        bench.py, a few steps of the ceiling and the pipeline (no DataLoader baseline);
    pretrain     train.py, 2 short epochs;
    stop         the same run stopped by SIGTERM at its start: exit 143 and a last.pt after its first step;
    resume       train.py --resume of the stopped run, compared bit for bit with the uninterrupted one (both run
                 with --deterministic, so the comparison means the same on CUDA);
    frozen       classifier.py on the pretrained backbone, frozen (with the closed-form probe);
    finetune     classifier.py --finetune;
    predict      predict.py on the demo's disc photos with the frozen classifier.
Prints a table (step, passed or its one-line error, seconds, images/s, peak memory) and writes it as JSON
(--json). Exits 1 when any step failed; a step whose input an earlier step failed to make is not run.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file, python experiments/check_machine.py: import from the repository root, as
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # python -m experiments.check_machine does

from simsiam import cli, dataset, runs
from simsiam.model import load_checkpoint

REPOSITORY = Path(__file__).resolve().parents[1]

# (image size px, batch, data flags) of the steps; --tiny: small enough for a 2-core CPU in CI (240 of the demo's
# images: 180 to pretrain on, 40 of them labelled, 60 held out)
SETTINGS = {False: (96, 256, []), True: (32, 32, ["--limit", "240", "--labels", "40"])}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="the device every step runs on (default: %(default)s)")
    parser.add_argument("--runs", type=Path, default=Path("runs/check-machine"),
                        help="where the steps' runs go, replaced at every check (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized settings, for CI")
    return parser.parse_args(argv)


def last_line(text: str) -> str:
    """The line that says what went wrong: the last non-empty one of a failed step's output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class Check:
    """Runs the steps one after another and keeps a row for each."""

    def __init__(self, runs: Path):
        self.runs, self.rows = runs, []

    def step(self, name: str, command: list[str], expect: int = 0, measure=None, stop_after=None) -> bool:
        """Run the script `command` (with `stop_after`: SIGTERM once that file exists); passed when it exits with
        `expect` and `measure()` (images/s, peak GB, or raises AssertionError saying what is wrong) holds."""
        started = time.perf_counter()
        log = self.runs / f"{name}.log"
        with open(log, "w") as file:
            process = subprocess.Popen([sys.executable, *command], cwd=REPOSITORY, stdout=file,
                                       stderr=subprocess.STDOUT)
            if stop_after is not None:  # train.py writes args.json once a signal would stop it after a step
                while process.poll() is None and not stop_after.exists():
                    time.sleep(0.02)
                process.send_signal(signal.SIGTERM)
            status = process.wait()
        seconds = time.perf_counter() - started
        row = {"step": name, "passed": False, "error": None, "seconds": round(seconds, 1), "images_per_s": None,
               "peak_memory_gb": None}
        if status != expect:
            row["error"] = f"exit {status}: {last_line(log.read_text(errors='replace'))}"
        else:
            try:
                row["images_per_s"], row["peak_memory_gb"] = measure() if measure else (None, None)
                row["passed"] = True
            except (AssertionError, KeyError, OSError, ValueError, StopIteration) as error:
                row["error"] = str(error) or type(error).__name__
        self.rows.append(row)
        print(f"{name}: {'passed' if row['passed'] else row['error']} ({seconds:.0f} s)", flush=True)
        return row["passed"]

    def skip(self, name: str, because: str) -> None:
        self.rows.append({"step": name, "passed": False, "error": f"not run: {because}", "seconds": None,
                          "images_per_s": None, "peak_memory_gb": None})


def epoch_figures(run: Path) -> tuple[float, float]:
    """(images/s, peak GB) of a train.py run's last epoch."""
    epochs = [record for record in runs.read_jsonl(run / "metrics.jsonl") if "epoch" in record]
    assert epochs, f"{run / 'metrics.jsonl'} holds no epoch"
    return epochs[-1]["images_per_s"], epochs[-1]["peak_memory_gb"]


def classifier_finished(run: Path) -> tuple[None, None]:
    """Checks that a classifier.py run left its final record with an accuracy; no figures."""
    final = runs.final_record(run / "metrics.jsonl")
    assert final is not None, f"{run / 'metrics.jsonl'} holds no final record"
    accuracy = final["test_accuracy"]
    assert 0 <= accuracy <= 1, f"test accuracy {accuracy} out of range"
    return None, None


def table(rows: list[dict]) -> str:
    lines = ["| step | result | s | images/s | peak GB |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        rate = "" if row["images_per_s"] is None else f"{row['images_per_s']:,.0f}"
        memory = "" if row["peak_memory_gb"] is None else f"{row['peak_memory_gb']:.2f}"
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(f"| {row['step']} | {'passed' if row['passed'] else row['error']} | {seconds} | {rate} | "
                     f"{memory} |")
    return "\n".join(lines)


@cli.reports_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    runs_dir = runs.writable_folder((REPOSITORY / args.runs).resolve(), "--runs")
    image_size, batch_size, subset = SETTINGS[args.tiny]
    data = ["--demo", *subset, "--cache-dir", str(runs_dir / "cache"), "--device", args.device]
    pretraining = [*data, "--image-size", str(image_size), "--batch-size", str(batch_size), "--epochs", "2",
                   "--deterministic", "--overwrite"]
    check = Check(runs_dir)
    started = time.perf_counter()

    def bench_figures():
        result = json.loads((runs_dir / "bench.json").read_text())
        return result["pipeline_images_per_s"], result["peak_memory_gb"]

    check.step("bench", ["bench.py", *data, "--image-size", str(image_size), "--batch-size", str(batch_size),
                         "--steps", "5", "--warmup", "2", "--no-baseline", "--json", str(runs_dir / "bench.json")],
               measure=bench_figures)
    whole, stopped = runs_dir / "pretrain", runs_dir / "stopped"
    pretrained = check.step("pretrain", ["train.py", *pretraining, "--out", str(whole)],
                            measure=lambda: epoch_figures(whole))

    def interrupted():
        state = load_checkpoint(stopped / "last.pt", "simsiam")
        assert "progress" in state, "last.pt holds no mid-epoch state"
        return None, None

    (stopped / "args.json").unlink(missing_ok=True)  # written just before the first step: the signal follows it
    if check.step("stop", ["train.py", *pretraining, "--out", str(stopped)], expect=128 + signal.SIGTERM,
                  measure=interrupted, stop_after=stopped / "args.json"):
        def resumed_equal():
            figures = epoch_figures(stopped)
            if pretrained:
                reference = load_checkpoint(whole / "siam.pt", "simsiam")["model"]
                resumed = load_checkpoint(stopped / "siam.pt", "simsiam")["model"]
                differing = [key for key in reference if not reference[key].equal(resumed[key])]
                assert not differing, (f"resumed run differs from the uninterrupted one in {len(differing)} of "
                                       f"{len(reference)} tensors (first: {differing[0]})")
            return figures

        resume = [flag for flag in pretraining if flag != "--overwrite"]
        check.step("resume", ["train.py", *resume, "--out", str(stopped), "--resume"], measure=resumed_equal)
    else:
        check.skip("resume", "the stop failed")

    frozen = runs_dir / "frozen"
    if pretrained:
        classifier = [*data, "--checkpoint", str(whole / "siam.pt"), "--epochs", "3", "--overwrite"]
        check.step("frozen", ["classifier.py", *classifier, "--out", str(frozen)],
                   measure=lambda: classifier_finished(frozen))
        check.step("finetune", ["classifier.py", *classifier, "--finetune", "--out", str(runs_dir / "finetune")],
                   measure=lambda: classifier_finished(runs_dir / "finetune"))
    else:
        check.skip("frozen", "no pretrained backbone")
        check.skip("finetune", "no pretrained backbone")
    if (frozen / "classifier.pt").is_file():
        photos = runs_dir / "cache" / dataset.DEMO_FOLDER / "disc"
        check.step("predict", ["predict.py", str(photos), "--checkpoint", str(frozen / "classifier.pt"),
                               "--device", args.device])
    else:
        check.skip("predict", "no classifier")

    failed = [row["step"] for row in check.rows if not row["passed"]]
    result = {"device": args.device, "tiny": args.tiny, "image_size": image_size, "batch_size": batch_size,
              "seconds": round(time.perf_counter() - started, 1), "date": time.strftime("%Y-%m-%d"),
              "python": sys.version.split()[0], "rows": check.rows, "failed": failed}
    print(table(check.rows))
    print(f"{len(check.rows) - len(failed)} of {len(check.rows)} steps passed in {result['seconds']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
