"""Label efficiency: held-out test accuracy against the number of labelled images, over a random and a SimSiam
backbone, frozen (linear probe, and the closed-form probe beside it) and fine-tuned.

    python -m experiments.label_efficiency --data data/PetImages          # one GPU: pretrains, then 124 runs
    python -m experiments.label_efficiency --data data/PetImages --checkpoint runs/headline/simsiam/siam.pt
    python -m experiments.label_efficiency --tiny                          # CPU smoke run on the --demo set (CI)

Runs the repository's own scripts, as headline.py does:
    1. train.py with its defaults, once; or --checkpoint, an existing siam.pt, checked first to hold out the
       same test split as these runs;
    2. classifier.py for {random, SimSiam} x {frozen, fine-tuned} x every size of --sizes that the images
       outside the test and validation splits allow (the others are skipped with a note) x its label seeds
       (--seed-rule), and on every such
       image (--all-labels, at the supervised bound's settings: random init fine-tuned there IS the bound),
       several at a time, all with the same data flags and the pretraining's resolution;
then writes RESULTS/label-efficiency.json (every run; mean, std, min and max over label seeds per backbone,
mode and size; the split, hardware, date and pretraining), RESULTS/label-efficiency.png (accuracy against
labels, log x axis) and the runs' small files (no checkpoints) to RESULTS/label-efficiency/, and prints the
table. Only the label draw (--label-seed) varies between seeds; initialisation and augmentation use
classifier.py's --seed 0, as in headline.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure  # drawn to files without pyplot, so no backend is chosen
from matplotlib.ticker import MaxNLocator, NullLocator, PercentFormatter

if not __package__:  # run as a file, python experiments/label_efficiency.py: import from the repository root, as
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # python -m experiments.label_efficiency does

from experiments import common
from simsiam import cli, dataset, figures, pretrained, runs

REPOSITORY = Path(__file__).resolve().parents[1]

BACKBONES = {"random": "random init", "simsiam": "SimSiam"}
MODES = {"frozen": "linear probe", "finetune": "fine-tuned"}
SIZES = [10, 20, 50, 100, 250, 500, 1000, 2500]  # labelled images, balanced per class; all of them come on top
# (up to this many labels, label seeds; None: any larger size). The spread between label draws shrinks as the set
# grows, and the runs get longer; the run on every labellable image draws nothing and is one run.
SEED_RULE = [(100, 5), (1000, 3), (None, 1)]
TINY = {"sizes": [10, 20], "seed_rule": [(10, 2), (None, 1)], "parallel": 2}  # the --tiny preset


def seed_rule_step(text: str) -> tuple[int | None, int]:
    """argparse type: UP_TO:SEEDS (100:5: sizes up to 100 labels get 5 label seeds) or all:SEEDS."""
    up_to, _, seeds = text.partition(":")
    if not ((up_to == "all" or up_to.isdigit() and int(up_to) >= 1) and seeds.isdigit() and int(seeds) >= 1):
        raise argparse.ArgumentTypeError(f"expected UP_TO:SEEDS with whole numbers >= 1, such as 100:5 or all:1, "
                                         f"got {text}")
    return None if up_to == "all" else int(up_to), int(seeds)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("data and pretraining (paths relative to the repository root)")
    group.add_argument("--data", type=Path, default=Path("data/PetImages"),
                       help="the image folder (default: %(default)s)")
    group.add_argument("--split-seed", type=cli.seed, default=0,
                       help="seed of the held-out test split, the same in every run (default: %(default)s)")
    group.add_argument("--test-fraction", type=cli.fraction, default=0.1,
                       help="share of each class held out (default: %(default)s)")
    group.add_argument("--limit", type=cli.positive(int), default=None,
                       help="a seeded subset of N images, every run (default: all)")
    group = parser.add_argument_group("the sweep")
    group.add_argument("--sizes", type=cli.positive(int), nargs="+", default=SIZES,
                       help=f"labelled-set sizes; every image outside the test and validation splits (--all-labels) "
                            f"is always added (default: %(default)s; --tiny: {TINY['sizes']})")
    group.add_argument("--seed-rule", type=seed_rule_step, nargs="+", default=SEED_RULE, metavar="UP_TO:SEEDS",
                       help="label seeds per size: a size takes the first step whose UP_TO it does not exceed, the "
                            "last step is all:SEEDS for any larger size; the run on every labellable image is one run, "
                            "since nothing is drawn (default: 100:5 1000:3 all:1; --tiny: 10:2 all:1)")
    group.add_argument("--classifier-epochs", type=cli.positive(int), default=100,
                       help="per labelled-set size, in batches of 50 or of all the labels when fewer "
                            "(default: %(default)s)")
    group.add_argument("--all-labels-epochs", type=cli.positive(int), default=15,
                       help="on every image outside the test and validation splits, at batch 256 (default: "
                            "%(default)s, as headline.py's supervised bound)")
    group = parser.add_argument_group("run")
    group.add_argument("--runs", type=Path, default=Path("runs/label-efficiency"),
                       help="where the runs go (default: %(default)s)")
    group.add_argument("--results", type=Path, default=Path("results"),
                       help="where the JSON, the PNG and the small files go (default: %(default)s)")
    group.add_argument("--parallel", type=cli.positive(int), default=4,
                       help=f"classifier runs at a time (they share the GPU; default: %(default)s; --tiny: "
                            f"{TINY['parallel']})")
    group.add_argument("--tiny", action="store_true", help="CPU smoke run: --demo data, minimal settings")
    common.add_pretraining_arguments(parser)
    if parser.parse_known_args(argv)[0].tiny:
        parser.set_defaults(**TINY)
    args = parser.parse_args(argv)
    limits = [up_to for up_to, _ in args.seed_rule]
    if limits[-1] is not None or None in limits[:-1] or limits[:-1] != sorted(set(limits[:-1])):
        parser.error("--seed-rule: steps in increasing UP_TO, the last one all:SEEDS (e.g. 100:5 1000:3 all:1)")
    return args


def label_seeds(num_labels: int, rule: list[tuple[int | None, int]]) -> int:
    """How many label seeds a labelled-set size gets under `rule`: those of its first step whose UP_TO the size
    does not exceed (all: any size)."""
    return next(seeds for up_to, seeds in rule if up_to is None or num_labels <= up_to)


def held_out_split(options: dataset.DataOptions, checkpoint: dict,
                   path: Path) -> tuple[dataset.ImageSet, dataset.Splits]:
    """The images and splits that the classifier runs will see: the data `options` at the checkpoint's resolution
    (the cache the pretraining built); refuses a checkpoint pretrained with another test split before any run
    starts, as classifier.py would in each."""
    image_size, cache_size = common.resolution(checkpoint)
    # the split only (labels=1): each size draws its own labels
    options = dataclasses.replace(options, image_size=image_size, cache_size=cache_size, labels=1)
    data, splits = dataset.open_data(options, verbose=False)
    pretrained.check_unseen(checkpoint, path, data.hashes[splits.test])
    return data, splits


def fitting_sizes(sizes: list[int], data: dataset.ImageSet,
                  options: dataset.DataOptions) -> tuple[list[int], list[str]]:
    """(the sizes classifier.py can draw from the images outside the test and validation splits, a note for each
    it cannot), asking dataset.make_splits itself, so the rule is classifier.py's."""
    fitting, notes = [], []
    for size in sorted(set(sizes)):
        try:
            dataset.make_splits(data.labels, len(data.classes), options.test_fraction, size, options.split_seed, 0,
                                data.classes, data.hashes, options.val_fraction)
            fitting.append(size)
        except dataset.DataError as error:
            notes.append(f"{size:,} labels skipped: {error}")
    return fitting, notes


@dataclass(frozen=True)
class Run:
    backbone: str  # "random" or "simsiam"
    mode: str  # "frozen" or "finetune"
    labels: int | None  # None: every image outside the test and validation splits (--all-labels)
    seed: int | None  # the label seed; None with every such image, where nothing is drawn
    out: Path
    command: list[str]


def classifier_runs(sizes: list[int], args: argparse.Namespace, common_flags: list[str], checkpoint: Path,
                    runs_dir: Path) -> list[Run]:
    """Every classifier run of the sweep, the longest first (all labels, then the largest sizes, fine-tuned
    before frozen), so that the pool does not end waiting on one long run."""
    sized = common.TINY["classifier"] if args.tiny else ["--epochs", str(args.classifier_epochs)]
    everything = [*common.ALL_LABELS, *(common.TINY["all_labels"] if args.tiny else
                                        ["--epochs", str(args.all_labels_epochs)])]
    planned = []
    for labels in [None, *sorted(sizes, reverse=True)]:
        for seed in [None] if labels is None else range(label_seeds(labels, args.seed_rule)):
            for mode in ("finetune", "frozen"):
                for backbone in BACKBONES:
                    name = runs.classifier_run_name(backbone == "random", mode == "finetune", labels is None)
                    out = runs_dir / (name if labels is None else f"{name}-{labels}-labels-seed{seed}")
                    training = everything if labels is None else ["--labels", str(labels), "--label-seed",
                                                                  str(seed), *sized]
                    command = ["classifier.py", *common_flags,
                               *(["--random"] if backbone == "random" else ["--checkpoint", str(checkpoint)]),
                               *(["--finetune"] if mode == "finetune" else []), *training,
                               "--out", str(out), "--overwrite"]
                    planned.append(Run(backbone, mode, labels, seed, out, command))
    return planned


def summarise(records: list[dict]) -> list[dict]:
    """Per (backbone, mode, labels): the number of seeds and the spread (mean, std, min, max) of the test
    accuracy and, where the runs have one, of the closed-form probe's."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["backbone"], record["mode"], record["labels"]), []).append(record)
    summary = []
    for (backbone, mode, labels), group in sorted(groups.items()):
        closed_form = [r["closed_form_accuracy"] for r in group if r["closed_form_accuracy"] is not None]
        summary.append({"backbone": backbone, "mode": mode, "labels": labels, "all_labels": group[0]["all_labels"],
                        "seeds": len(group), "test_accuracy": common.spread([r["test_accuracy"] for r in group]),
                        "closed_form_accuracy": common.spread(closed_form) if closed_form else None})
    return summary


def plot(summary: list[dict], chance: float, num_test: int, data_name: str, rule: str, path: Path) -> None:
    """Test accuracy against labelled images (log x): per backbone x mode the mean over label seeds with a
    min-max band, the closed-form probe of the frozen runs dotted, the supervised bound and chance level."""
    figure = Figure(figsize=(11, 7.5))
    axis = figure.subplots()
    for backbone, backbone_name in BACKBONES.items():
        colour = figures.COLOURS[backbone][0]
        for mode, mode_name in MODES.items():
            rows = [row for row in summary if (row["backbone"], row["mode"]) == (backbone, mode)]
            x, accuracy = [row["labels"] for row in rows], [row["test_accuracy"] for row in rows]
            axis.fill_between(x, [a["min"] for a in accuracy], [a["max"] for a in accuracy], color=colour,
                              alpha=0.12, linewidth=0)
            axis.plot(x, [a["mean"] for a in accuracy], color=colour, linestyle=figures.LINESTYLES[mode], marker="o",
                      linewidth=2, label=f"{backbone_name}, {mode_name}")
        closed_form = [(row["labels"], row["closed_form_accuracy"]["mean"]) for row in summary
                       if row["backbone"] == backbone and row["closed_form_accuracy"] is not None]
        if closed_form:
            axis.plot(*zip(*closed_form), color=colour, linestyle=":", linewidth=1.2,
                      label=f"{backbone_name}, closed-form probe")
    bound = next(row for row in summary
                 if (row["backbone"], row["mode"], row["all_labels"]) == ("random", "finetune", True))
    axis.axhline(bound["test_accuracy"]["mean"], color="black", linestyle="-.", linewidth=1,
                 label=f"supervised bound (random init fine-tuned\non all {bound['labels']:,} labels): "
                       f"{bound['test_accuracy']['mean']:.1%}")
    axis.axhline(chance, color="silver", linewidth=1.5,
                 label=f"chance (majority class of the test split): {chance:.0%}")
    ticks = sorted({row["labels"] for row in summary})
    axis.set_xscale("log")
    axis.set_xticks(ticks, [f"all\n{n:,}" if n == bound["labels"] else f"{n:,}" for n in ticks])
    axis.xaxis.set_minor_locator(NullLocator())
    axis.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))  # whole percents: 1, 2, 5 or 10 apart
    axis.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    axis.set(xlabel="labelled training images (balanced per class; log scale)", ylabel="test accuracy (%)",
             title=f"Label efficiency on {data_name}, tested on {num_test:,} held-out images\n"
                   f"lines: mean over label seeds, bands: min to max ({rule})")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=9)  # a column per backbone
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def describe_rule(rule: list[tuple[int | None, int]]) -> str:
    """The seed rule in words, for the plot: 'label seeds: 5 up to 100 labels, 3 up to 1,000, 1 beyond'."""
    steps = [f"{seeds} up to {up_to:,}" + (" labels" if i == 0 else "") for i, (up_to, seeds) in enumerate(rule[:-1])]
    return "label seeds: " + ", ".join([*steps, f"{rule[-1][1]} {'beyond' if steps else 'at every size'}"])


def table(summary: list[dict]) -> str:
    """The summary as a markdown table: one row per size, one column per backbone x mode (mean ± std over
    label seeds, in %), the closed-form probe last."""
    columns = [(backbone, mode, "test_accuracy", f"{name}, {MODES[mode]}")
               for mode in MODES for backbone, name in BACKBONES.items()]
    columns += [(backbone, "frozen", "closed_form_accuracy", f"{name}, closed-form") for backbone, name in
                BACKBONES.items()]
    cells = {(row["backbone"], row["mode"], row["labels"]): row for row in summary}
    lines = ["| labels | seeds | " + " | ".join(column[3] for column in columns) + " |",
             "| --- " * (len(columns) + 2) + "|"]
    for labels in sorted({row["labels"] for row in summary}):
        first = next(row for row in summary if row["labels"] == labels)
        values = [cells.get((backbone, mode, labels), {}).get(key) for backbone, mode, key, _ in columns]
        lines.append(f"| {'all ' if first['all_labels'] else ''}{labels:,} | {first['seeds']} | " + " | ".join(
            f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" if v else "–" for v in values) + " |")
    return "\n".join(lines)


@cli.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    runs_dir = runs.writable_folder((REPOSITORY / args.runs).resolve(), "--runs")
    runs.writable_folder((REPOSITORY / args.results).resolve(), "--results")
    settings = common.pretraining_settings(args)
    options = common.data_options(args.data, args.tiny, runs_dir, settings["image_size"], split_seed=args.split_seed,
                                  test_fraction=args.test_fraction, **({"limit": args.limit} if args.limit else {}))
    data, pretraining = common.data_flags(options), common.pretraining_flags(args)
    images_per_s = None  # measured (a short bench.py run) once the checks that need no run have passed
    if args.checkpoint is None:
        images_per_s = common.measured_throughput(settings, runs_dir)
        print(common.estimate(images_per_s, settings["epochs"] * common.pretraining_images(options), {}), flush=True)
        simsiam = runs_dir / "simsiam"
        train_command, pretrain_s = common.pretrain(data, simsiam, pretraining, runs_dir / "train.log")
        checkpoint_path = simsiam / "siam.pt"
    else:
        checkpoint_path = (REPOSITORY / args.checkpoint).resolve()
    checkpoint = pretrained.read(checkpoint_path)
    common_flags = [*data, *common.resolution_flags(checkpoint)]  # every run: same split, same pixels
    images, splits = held_out_split(options, checkpoint, checkpoint_path)
    sizes, skipped = fitting_sizes(args.sizes, images, options)
    test_counts = images.labels[splits.test].bincount(minlength=len(images.classes))
    chance = (test_counts.max() / len(splits.test)).item()  # always guessing the largest class
    print(f"held-out split: {len(splits.test):,} test images, {len(splits.pretrain):,} images to label outside the "
          f"test and validation splits ({', '.join(images.classes)}); sizes {sizes} and all"
          + "".join(f"\nnote: {note}" for note in skipped))

    planned = classifier_runs(sizes, args, common_flags, checkpoint_path, runs_dir)
    classifier_images = {"frozen": 0, "finetune": 0}
    for run in planned:
        classifier_images[run.mode] += int(run.command[run.command.index("--epochs") + 1]) * (
            run.labels or len(splits.pretrain))
    images_per_s = images_per_s or common.measured_throughput(settings, runs_dir)
    print(common.estimate(images_per_s, 0, classifier_images), flush=True)
    seconds = common.run_all([(run.command, run.out.with_suffix(".log")) for run in planned], args.parallel)
    records = []
    for run, run_s in zip(planned, seconds):
        final = common.final_record(run.out)
        records.append({"backbone": run.backbone, "mode": run.mode, "labels": run.labels or len(splits.pretrain),
                        "all_labels": run.labels is None, "seed": run.seed, "test_accuracy": final["test_accuracy"],
                        "closed_form_accuracy": final.get("closed_form_accuracy"), "num_test": final["num_test"],
                        "seconds": round(run_s, 1), "command": common.shown(run.command, runs_dir, args.runs),
                        "run": run.out.name})
    summary = summarise(records)
    if args.checkpoint is None:
        pretraining = {"command": common.shown(train_command, runs_dir, args.runs), "seconds": round(pretrain_s, 1),
                       **common.pretraining_summary(simsiam)}
    else:
        pretraining = {"checkpoint": str(args.checkpoint), "epoch": checkpoint.get("epoch"),
                       "args": checkpoint["args"], "code": checkpoint.get("code")}
    result = {"hardware": common.hardware(), "date": time.strftime("%Y-%m-%d"), "tiny": args.tiny,
              "split": {"data": "demo" if args.tiny else str(args.data), "split_seed": args.split_seed,
                        "test_fraction": args.test_fraction, "limit": args.limit, "classes": images.classes,
                        "num_test": len(splits.test), "to_label": len(splits.pretrain), "chance": chance},
              "pretraining": pretraining, "sizes": sizes, "skipped": skipped,
              "seed_rule": [["all" if up_to is None else up_to, seeds] for up_to, seeds in args.seed_rule],
              "runs": records, "summary": summary}

    results = REPOSITORY / args.results
    results.mkdir(parents=True, exist_ok=True)
    (results / "label-efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(summary, chance, len(splits.test), "the demo set" if args.tiny else args.data.name,
         describe_rule(args.seed_rule), results / "label-efficiency.png")
    common.copy_small_files([*([simsiam] if args.checkpoint is None else []), *(run.out for run in planned)],
                            results / "label-efficiency")
    print(table(summary))
    print(f"wrote {results / 'label-efficiency.json'}, {results / 'label-efficiency.png'}")


if __name__ == "__main__":
    main()
