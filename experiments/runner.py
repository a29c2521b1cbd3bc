"""What the experiments share: running the repository's scripts as a user would (a subprocess and a log per run, a
finished run reused, SIGINT and SIGTERM passed on), the flags and data of every run, and the paired comparisons."""
import argparse
import ctypes
import functools
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import evaluate
import runs
from model import UserError

REPOSITORY = Path(__file__).resolve().parents[1]
# --tiny: 200 demo images (130 to pretrain, 40 of them labelled, 20 validation, 50 test) at 32 px on the CPU
TINY = {"data": ["--demo", "--limit", "200", "--labels", "40"], "classifier": ["--epochs", "2", "--device", "cpu"],
        "train": ["--epochs", "2", "--batch-size", "32", "--image-size", "32", "--device", "cpu"]}
# Every label outside the test and validation splits at batch 256 (~88 steps an epoch on 22,500 photos, not ~450);
# base lr 0.01: a peak of 0.1 is above the standardised head's stability limit and trained at chance
ALL_LABELS = ["--all-labels", "--batch-size", "256", "--lr", "0.01"]
PROTOCOLS = {"linear probe": ("frozen", "head"), "closed-form probe": ("frozen", "closed_form"),
             "fine-tuned": ("finetune", "head")}  # (classifier mode, predictions.json key)

# ---------------------------------------------------------------- running the scripts

stop = runs.StopSignals()  # entered by `experiment`: a SIGINT or SIGTERM to the experiment goes on to its scripts
STOPPED = "interrupted: run the same command again to go on (finished runs reused, an unfinished pretraining resumed)"
PDEATHSIG = functools.partial(ctypes.CDLL(None).prctl, 1, signal.SIGTERM) if sys.platform == "linux" else None

def run(command: list[str], log: Path, stop_when: Path | None = None, shown: list[str] | None = None) -> int:
    """`command` (a repository script and its arguments) under `stop`, `log` holding it (or `shown`) and its output;
    its exit status. `stop_when`: SIGTERM once it exists. Its own process group: a Ctrl-C reaches it once, from here."""
    if stop.signal_number is None:  # PDEATHSIG (prctl 1): SIGTERM to it if this thread ends first, even by SIGKILL
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as file:
            print(f"# python {' '.join(shown or command)}", file=file, flush=True)
            process = subprocess.Popen([sys.executable, REPOSITORY / command[0], *command[1:]], stdout=file,
                                       stderr=file, stdin=subprocess.DEVNULL, process_group=0, preexec_fn=PDEATHSIG)
            while process.poll() is None and not (stop.signal_number or stop_when is not None and stop_when.exists()):
                time.sleep(0.05)
            process.send_signal(stop.signal_number or signal.SIGTERM)  # a stop passed on, once; none if it has ended
            process.wait()
    if stop.signal_number is not None:
        raise runs.Interrupted(STOPPED, stop.signal_number)
    return process.returncode

def last_line(log: Path) -> str:
    return ([line for line in log.read_text(errors="replace").splitlines() if line.strip()] or ["no output"])[-1]

def run_once(command: list[str], log: Path) -> None:  # skipped when logged done; an unfinished one resumes from last.pt
    out, text = Path(command[command.index("--out") + 1]), log.read_text(errors="replace") if log.is_file() else ""
    tried = text.startswith(f"# python {' '.join(command)}\n") and out.exists()
    if tried and "\n# done in " in text:
        return print(f"{log.stem}: finished before, reused", flush=True)
    resume, started = tried and (out / "last.pt").is_file(), time.perf_counter()
    if code := run(["--resume" if resume and flag == "--overwrite" else flag for flag in command], log, shown=command):
        raise UserError(f"{log.stem} failed (exit {code}): {last_line(log)} (log: {log})")
    with open(log, "a") as file:
        print(f"\n# done in {time.perf_counter() - started:.0f} s", file=file)
    print(f"{log.stem}: {time.perf_counter() - started:.0f} s", flush=True)

def run_all(jobs: list[tuple[list[str], Path]], parallel: int = 1) -> None:
    """run_once each (command, log), `parallel` at a time; after a failure none starts, the first error is raised."""
    with ThreadPoolExecutor(parallel) as pool:
        for future in (futures := [pool.submit(run_once, *job) for job in jobs]):
            future.add_done_callback(lambda done: not done.cancelled() and done.exception()
                                     and pool.shutdown(wait=False, cancel_futures=True))
    for error in [future.exception() for future in futures if not future.cancelled() and future.exception()][:1]:
        raise error

def experiment(main):  # an experiment's main: its errors reported once (runs.reports_errors), under `stop` throughout
    def stoppable(argv=None):
        with stop:  # a SIGINT or SIGTERM stops the script running; no other starts, and main ends at the latest
            main(argv)
        if stop.signal_number is not None:
            raise runs.Interrupted(STOPPED, stop.signal_number)
    return runs.reports_errors(functools.wraps(main)(stoppable))

# ---------------------------------------------------------------- the flags and runs of an experiment

def parser(doc: str, runs_default: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add, choice = parser.add_argument, parser.add_mutually_exclusive_group()  # --tiny: the demo set, never --data
    choice.add_argument("--data", type=Path, default=Path("data/PetImages"), help="the photos (default: %(default)s)")
    add("--runs", type=Path, default=Path(runs_default), help="the run folders (default: %(default)s)")
    add("--results", type=Path, help="the result files (default: RUNS/results)")
    add("--replace-tracked", action="store_true", help="let --results replace files that git tracks (results/)")
    add("--checkpoint", type=Path, help="a siam.pt pretrained on the same split: no pretraining")
    add("--pretrain-seeds", type=runs.seed, nargs="+", default=[0], help="a pretraining each (default: %(default)s)")
    add("--label-seeds", type=runs.seed, nargs="+", default=[0, 1, 2], help="a label draw each (default: 0 1 2)")
    add("--classifier-epochs", type=runs.positive(int), default=100, help="on a labelled subset (default: 100)")
    add("--imagenet", action="store_true", help="also torchvision's ImageNet weights: a reference with free labels")
    add("--supervised-epochs", type=runs.positive(int), default=15, help="on every label (default: %(default)s)")
    add("--parallel", type=runs.positive(int), default=4 if torch.cuda.is_available() else 1, help="runs at a time")
    choice.add_argument("--tiny", action="store_true", help="CPU smoke run in seconds on the --demo set (the tests)")
    add("--report-only", action="store_true", help="run nothing: the results from the runs in --runs")
    add("train_flags", nargs="*", metavar="-- TRAIN_FLAGS", help="train.py flags after a --, applied last")
    return parser

def parse(parser: argparse.ArgumentParser, argv, name: str) -> argparse.Namespace:  # RESULTS/NAME*: its files
    parser.set_defaults(results=parser.parse_known_args(argv)[0].runs / "results")  # not the repository's results/
    args = parser.parse_args(argv)
    if len(set(args.label_seeds)) < len(args.label_seeds):  # one draw would count twice in the paired comparison
        parser.error(f"--label-seeds must differ from each other, got {' '.join(map(str, args.label_seeds))}")
    if not args.replace_tracked and shutil.which("git") and (tracked := subprocess.run(["git", "ls-files",
            f"{(args.results / name).resolve()}*"], cwd=REPOSITORY, capture_output=True, text=True).stdout.split()):
        raise UserError(f"--results {args.results}: git tracks {tracked[0]} ...: --replace-tracked replaces them")
    return args

def data_flags(args: argparse.Namespace) -> list[str]:  # the same images and split in every run
    return [*TINY["data"], "--cache-dir", str(args.runs / "cache")] if args.tiny else ["--data", str(args.data)]

def pretrained(args: argparse.Namespace, recipe: list[str], budgets: list[int] = ()) -> dict[str, Path]:
    """{backbone name: siam.pt}: --checkpoint, or train.py with `recipe` and the flags after --, once per seed; with
    `budgets`, also the siam.pt of those epochs (train.py --keep-epochs), named simsiam-seedS-epochE."""
    if args.checkpoint:
        return {"simsiam": args.checkpoint}
    folders = {f"simsiam-seed{seed}": args.runs / f"pretrain-seed{seed}" for seed in args.pretrain_seeds}
    keep = ["--keep-epochs", *map(str, budgets)] if budgets else []
    if not args.report_only:
        run_all([(["train.py", *data_flags(args), *(TINY["train"] if args.tiny else recipe), *keep, *args.train_flags,
                   "--seed", str(seed), "--out", str(folder), "--overwrite"], folder.with_suffix(".log"))
                 for seed, folder in zip(args.pretrain_seeds, folders.values())])
    return {**{f"{name}-epoch{epoch}": folder / f"siam-epoch{epoch}.pt" for name, folder in folders.items()
               for epoch in budgets}, **{name: folder / "siam.pt" for name, folder in folders.items()}}

def run_classifiers(args, checkpoints: dict[str, Path], planned: dict[Path, tuple[str, str, list[str]]]) -> None:
    """classifier.py for each {out: (backbone, mode, flags)}, at the pretraining's resolution: the same pixels."""
    checkpoint = evaluate.read_pretrained(next(iter(checkpoints.values())), "--checkpoint")
    image_size, cache_size = evaluate.resolution(None, None, checkpoint["args"], checkpoint["args"]["image_size"])
    run_all([(["classifier.py", *data_flags(args), "--image-size", str(image_size), "--cache-size", str(cache_size),
               *(["--random"] if backbone == "random" else ["--init", "imagenet"] if backbone == "imagenet" else
                 ["--checkpoint", str(checkpoints[backbone])]), *(["--finetune"] if mode == "finetune" else []),
               *(TINY["classifier"] if args.tiny else ["--epochs", str(args.classifier_epochs)]), *flags,
               "--out", str(out), "--overwrite"], out.with_suffix(".log"))
             for out, (backbone, mode, flags) in planned.items()], args.parallel)

def compare(args, checkpoints: dict[str, Path], modes: tuple, extra: dict | None = None) -> tuple[list, list]:
    """classifier.py over random init and each of `checkpoints` per mode and label seed, the `extra` runs, plot.py;
    (per protocol and backbone SimSiam - random init over the label draws and per draw, the folders to copy)."""
    backbones, seeds = ["random", *checkpoints, *["imagenet"] * args.imagenet], args.label_seeds
    folders = {(b, mode, seed): args.runs / f"{b}-{mode}-labels{seed}"
               for seed in seeds for mode in modes for b in backbones}
    pretrainings = [] if args.checkpoint else [path.parent for path in checkpoints.values()]
    if not args.report_only:
        run_classifiers(args, checkpoints, {**(extra or {}), **{out: (b, mode, ["--label-seed", str(seed)])
                                                                for (b, mode, seed), out in folders.items()}})
        first = [out for (_, _, seed), out in folders.items() if seed == seeds[0]]
        run_all([(["plot.py", *map(str, [*pretrainings, *first]), "--out", str(args.runs / "plots")],
                  args.runs / "plot.log")])
    predictions = {key: runs.read_predictions(out) for key, out in folders.items()}
    if len({json.dumps([p.get("files"), p.get("labels")]) for p in predictions.values()}) > 1:  # not one test set
        raise UserError(f"the classifier runs in {args.runs} were not all tested on the same images")
    rows = []
    for protocol, (mode, key) in [(protocol, use) for protocol, use in PROTOCOLS.items() if use[0] in modes]:
        correct = {b: [evaluate.correctness(predictions[b, mode, seed], key) for seed in seeds] for b in backbones}
        for b in backbones[1:]:
            draws = [{"label_seed": seed, **evaluate.paired_difference(simsiam, random)}
                     for seed, simsiam, random in zip(seeds, correct[b], correct["random"])]
            rows.append({"protocol": protocol, "backbone": b, "per_draw": draws,
                         **evaluate.paired_difference_over_draws(correct[b], correct["random"])})
    return rows, [*pretrainings, *(extra or {}), *folders.values(), args.runs / "plots"]

def paired_table(rows: list[dict]) -> list[str]:
    def cells(d: dict) -> str:  # random init | the backbone | backbone - random (paired SE) | 95% interval
        return (f"{100 * d['accuracy_b']:.1f}% | {100 * d['accuracy_a']:.1f}% | {100 * d['difference']:+.1f} ± "
                f"{100 * d['standard_error']:.1f} | {100 * d['low']:+.1f} to {100 * d['high']:+.1f}")
    lines = ["| protocol | backbone | label draw | random init | backbone | backbone - random (paired SE, points) | "
             "95% interval | McNemar p |", "| --- " * 8 + "|"]
    for row in rows:
        lines.append(f"| {row['protocol']} | {row['backbone']} | mean of {row['draws']} | {cells(row)} | – |")
        lines += [f"| | | seed {d['label_seed']} | {cells(d)} | {d['mcnemar_p']:.2g} |" for d in row["per_draw"]]
    return lines

def epochs(folder: Path) -> list[dict]:  # a train.py run's records: loss, z-std, kNN accuracy, epoch_s ...
    return [record for record in runs.read_jsonl(folder / "metrics.jsonl") if "epoch" in record]

def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}

def write_results(args, name: str, result: dict, table: list[str], folders: list[Path]) -> None:
    """RESULTS/NAME.json (arguments, date, machine, pretrainings), NAME.md (the table, printed), NAME/ (small files)."""
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")  # the machine's figures
    result = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "environment": runs.environment(device),
              "pretraining": {out.name: epochs(out)[-1] for out in folders if out.name[:9] == "pretrain-"}, **result}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.results / f"{name}.md").write_text("\n".join(table) + "\n")
    for file in [file for out in folders for file in out.glob("*.*") if file.suffix in (".json", ".jsonl", ".png")]:
        (args.results / name / file.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, args.results / name / file.parent.name / file.name)
    print("\n".join(table))
