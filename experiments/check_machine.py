"""The end-to-end check of a machine, the first thing to run on a GPU: does every script run here, and how fast?

    python -m experiments.check_machine                       # the GPU (auto device): 96 px, batch 256, ~2 min
    python -m experiments.check_machine --device cpu --tiny   # a CPU, in seconds (the tests)

On the demo set, a subprocess per step: bench.py; train.py (2 short epochs); the same run stopped by SIGTERM after a
step, then --resume, equal bit for bit to the uninterrupted one (--deterministic); classifier.py on its siam.pt;
predict.py. Prints and writes (RUNS/check-machine.json) each step passed, not run or why it failed; exits 1 if any."""
import argparse
import json
import shutil
import signal
import time
from pathlib import Path

import dataset
import model
import runs
from experiments import runner

SIZES = {False: ["--image-size", "96", "--batch-size", "256"],  # --tiny: 240 demo images (180 to pretrain, 40 of
         True: ["--image-size", "32", "--batch-size", "32", "--limit", "240", "--labels", "40"]}  # them labelled)

def same_weights(whole: Path, resumed: Path) -> dict:
    reference, state = (model.load_checkpoint(folder / "siam.pt", "simsiam")["model"] for folder in (whole, resumed))
    differing = [key for key in reference if not reference[key].equal(state[key])]
    assert not differing, f"the resumed run differs from the uninterrupted one in {len(differing)} tensors"
    return runner.epochs(resumed)[-1]

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="the device of every step (default: %(default)s)")
    parser.add_argument("--runs", type=Path, default=Path("runs/check-machine"), help="replaced at every check")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized settings, for the tests")
    return parser.parse_args(argv)

@runs.reports_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    whole, stopped, classifier = (args.runs / name for name in ("pretrain", "stopped", "classifier"))
    for folder in (whole, stopped, classifier):
        shutil.rmtree(folder, ignore_errors=True)
    data = ["--demo", "--cache-dir", str(args.runs / "cache"), "--device", args.device, *SIZES[args.tiny]]
    train, bench = ["train.py", *data, "--epochs", "2", "--deterministic", "--out"], args.runs / "bench.json"
    steps = [  # name, command, the file it needs, its exit status, its figures (raises saying what is wrong)
        ("bench", ["bench.py", *data, "--steps", "5", "--warmup", "2", "--no-baseline", "--json", str(bench)], None, 0,
         lambda: json.loads(bench.read_text())),
        ("pretrain", [*train, str(whole)], None, 0, lambda: runner.epochs(whole)[-1]),
        ("stop", [*train, str(stopped)], None, 128 + signal.SIGTERM,  # mid-epoch: after the step in progress
         lambda: {"step": model.load_checkpoint(stopped / "last.pt", "simsiam", needs=("step",))["step"]}),
        ("resume", [*train, str(stopped), "--resume"], stopped / "last.pt", 0, lambda: same_weights(whole, stopped)),
        ("classifier", ["classifier.py", *data, "--checkpoint", str(whole / "siam.pt"), "--epochs", "3", "--out",
                        str(classifier)], whole / "siam.pt", 0, lambda: runs.final_record(
                            classifier / "metrics.jsonl")),
        ("predict", ["predict.py", str(args.runs / "cache" / dataset.DEMO_FOLDER / "disc"), "--checkpoint",
                     str(classifier / "classifier.pt"), "--device", args.device], classifier / "classifier.pt", 0,
         lambda: None)]
    rows, started = [], time.perf_counter()
    with runner.stop:
        for name, command, needs, expected, figures in steps:
            rows.append(row := {"step": name, "passed": False, "error": f"not run: no {needs}", "seconds": None})
            if needs is None or needs.exists():
                log, step_started = args.runs / f"{name}.log", time.perf_counter()
                status = runner.run(command, log, stop_when=stopped / "args.json" if name == "stop" else None)
                row["seconds"] = round(time.perf_counter() - step_started, 1)
                try:
                    assert status == expected, f"exit {status}: {runner.last_line(log)}"
                    row.update(passed=True, error=None, figures=figures())
                except (AssertionError, OSError, LookupError, ValueError, model.UserError) as error:
                    row["error"] = str(error) or type(error).__name__
            print(f"{name}: {'passed' if row['passed'] else row['error']} ({row['seconds']} s)", flush=True)
    failed = [row["step"] for row in rows if not row["passed"]]
    result = {"device": args.device, "tiny": args.tiny, "date": time.strftime("%Y-%m-%d"), "rows": rows,
              "failed": failed, "seconds": round(time.perf_counter() - started, 1)}
    (args.runs / "check-machine.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(rows) - len(failed)} of {len(rows)} steps passed; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0

if __name__ == "__main__":
    raise SystemExit(main())
