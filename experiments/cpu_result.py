"""The result on a CPU: train.py --cpu, then the frozen probes of 250 labels (SGD linear and closed-form) over it and
random init, paired on the same test images, per label draw; with --budgets, also at earlier epochs: the curve.

    python -m experiments.cpu_result                      # data/PetImages, train.py --cpu: 60 epochs at 64 px
    python -m experiments.cpu_result --tiny               # CPU smoke run on the --demo set, in seconds
    python -m experiments.cpu_result --budgets 5 10 20 40 -- --save-every 1   # the curve; train.py's flags after --

The verdict is over the label draws: SimSiam ahead by MARGIN and STANDARD_ERRORS paired standard errors. Reuses
finished runs, resumes an unfinished pretraining. Writes RESULTS/cpu-result.json, .md, small files (and the curve)."""
from matplotlib.figure import Figure

import runs
from experiments import runner

MARGIN, STANDARD_ERRORS = 0.05, 3  # the least difference that counts as SimSiam paying: in accuracy, and in SEs

def parse_args(argv=None):
    parser = runner.parser(__doc__, "runs/cpu-result")
    parser.add_argument("--budgets", type=runs.positive(int), nargs="+", default=[], metavar="EPOCH",
                        help="also probe the pretraining after these epochs (train.py --keep-epochs)")
    return runner.parse(parser, argv, "cpu-result")

def budget(args, row: dict) -> dict:  # the epoch of a row's backbone, and the pretraining minutes to it
    name, _, epoch = row["backbone"].partition("-epoch")
    records = runner.epochs(args.runs / name.replace("simsiam", "pretrain"))
    epoch = int(epoch or records[-1]["epoch"])
    return {"pretraining": name, "epoch": epoch, "minutes": sum(r["epoch_s"] for r in records[:epoch]) / 60}

def draw_curve(rows: list[dict], path) -> None:
    figure = Figure(figsize=(11, 4), layout="constrained")
    figure.suptitle("frozen probes, 250 labels: SimSiam minus random init, paired SE over the label draws")
    for axes, x in zip(figure.subplots(1, 2, sharey=True), ("epoch", "minutes")):
        for key in sorted({(row["protocol"], row["pretraining"]) for row in rows}):
            line = sorted((row for row in rows if (row["protocol"], row["pretraining"]) == key), key=lambda r: r[x])
            axes.errorbar([r[x] for r in line], [100 * r["difference"] for r in line], marker="o", capsize=3,
                          yerr=[100 * r["standard_error"] for r in line], label=", ".join(key))
        axes.axhline(100 * MARGIN, color="tab:green", linestyle=":", label="target")
        axes.set(xlabel=f"pretraining {x}{'s' * (x == 'epoch')}", ylabel="SimSiam - random (points)")
        axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=120)

@runner.experiment
def main(argv=None) -> None:
    args = parse_args(argv)
    rows, folders = runner.compare(args, runner.pretrained(args, ["--cpu"], args.budgets), ("frozen",))
    rows = [{**row, "meets_target": row["difference"] >= max(MARGIN, STANDARD_ERRORS * row["standard_error"]),
             **(budget(args, row) if args.budgets and row["backbone"] != "imagenet" else {})} for row in rows]
    verdicts = [f"verdict, {r['protocol']}, {r['backbone']}: "
                f"{'ImageNet weights' if r['backbone'] == 'imagenet' else 'SimSiam'} "
                f"{('does not beat', 'beats')[r['meets_target']]} random init by {100 * MARGIN:.0f} points and "
                f"{STANDARD_ERRORS} paired standard errors over {r['draws']} label draws"
                + (f", after {r['epoch']} epochs ({r['minutes']:.0f} min)" if "epoch" in r else "") for r in rows]
    runner.write_results(args, "cpu-result", {"margin": MARGIN, "standard_errors": STANDARD_ERRORS, "rows": rows},
                         [*runner.paired_table(rows), "", *verdicts], folders)
    if args.budgets:
        draw_curve([row for row in rows if "epoch" in row], args.results / "cpu-result-curve.png")

if __name__ == "__main__":
    main()
