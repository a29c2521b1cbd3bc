"""Label efficiency: test accuracy against the number of labels, random init against SimSiam, frozen and fine-tuned.

    python -m experiments.label_efficiency                     # a GPU: pretraining, then 100 classifier runs
    python -m experiments.label_efficiency --checkpoint runs/headline/pretrain-seed0/siam.pt
    python -m experiments.label_efficiency --tiny              # CPU smoke run on the --demo set, in seconds

Each of --sizes is drawn once per --label-seeds; the supervised bound is random init fine-tuned on every label.
Writes RESULTS/label-efficiency.json, .md, .png (the spread over the draws as a band) and the runs' small files."""
import json

from matplotlib.figure import Figure  # drawn to a file without pyplot: no backend is chosen
from matplotlib.ticker import PercentFormatter

import evaluate
import runs
from experiments import runner

SIZES = [10, 20, 50, 100, 250, 500, 1000, 2500]  # labelled images, balanced per class

def parse_args(argv=None):
    parser = runner.parser(__doc__, "runs/label-efficiency")
    parser.add_argument("--sizes", type=runs.positive(int), nargs="+", help=f"(default: {SIZES}; --tiny: [10])")
    return runner.parse(parser, argv, "label-efficiency")

def plot(summary: list[dict], backbones: list[str], bound: float, chance: float, path) -> None:
    axis = (figure := Figure(figsize=(11, 7))).subplots()
    for index, backbone in enumerate(backbones):
        for protocol, (mode, _) in runner.PROTOCOLS.items():
            rows = [row for row in summary if (row["backbone"], row["protocol"]) == (backbone, protocol)]
            colour = (runs.COLOURS.get(backbone) or runs.COLOURS["simsiam"][index - 1:])[0]  # simsiam-seedS: in turn
            sizes = [r["labels"] for r in rows]
            axis.fill_between(sizes, [r["min"] for r in rows], [r["max"] for r in rows], color=colour, alpha=0.1)
            axis.plot(sizes, [r["mean"] for r in rows], color=colour, marker="o", label=f"{backbone}, {protocol}",
                      linestyle=":" if protocol == "closed-form probe" else runs.LINESTYLES[mode])
    axis.axhline(bound, color="black", linestyle="-.", label=f"supervised bound: {bound:.1%}")
    axis.axhline(chance, color="silver", label=f"chance (the test split's largest class): {chance:.0%}")
    axis.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    axis.set(xscale="log", xlabel="labelled images, balanced per class (log scale; the last: every label)",
             ylabel="test accuracy", title="Label efficiency: mean over label draws, band: min to max")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=120, bbox_inches="tight")

@runner.experiment
def main(argv=None) -> None:
    args = parse_args(argv)
    checkpoints = runner.pretrained(args, [])
    backbones = ["random", *checkpoints, *["imagenet"] * args.imagenet]
    sizes = sorted(set(args.sizes or ([10] if args.tiny else SIZES)), reverse=True)
    draws = [("all-labels", [*runner.ALL_LABELS, "--epochs", "1" if args.tiny else str(args.supervised_epochs)]),
             *((f"{n}-labels-seed{seed}", ["--labels", str(n), "--label-seed", str(seed)])
               for n in sizes for seed in args.label_seeds)]  # the longest first
    planned = {args.runs / f"{backbone}-{mode}-{name}": (backbone, mode, flags)
               for name, flags in draws for mode in ("finetune", "frozen") for backbone in backbones}
    if not args.report_only:
        runner.run_classifiers(args, checkpoints, planned)
    records, groups = [], {}  # a record per run and protocol; grouped by backbone, protocol and labels
    for out, (backbone, mode, _) in planned.items():
        predictions, labels = runs.read_predictions(out), len(json.loads((out / "labelled.json").read_text())["files"])
        for protocol, key in [(name, key) for name, (use, key) in runner.PROTOCOLS.items()
                              if use == mode and key in predictions]:
            records.append({"run": out.name, "backbone": backbone, "protocol": protocol, "labels": labels,
                            "accuracy": sum(correct := evaluate.correctness(predictions, key)) / len(correct)})
            groups.setdefault((backbone, protocol, labels), []).append(records[-1]["accuracy"])
    summary = [{"backbone": backbone, "protocol": protocol, "labels": labels, "seeds": len(accuracies),
                **runner.spread(accuracies)} for (backbone, protocol, labels), accuracies in sorted(groups.items())]
    bound, test = records[0]["accuracy"], predictions["labels"]  # the bound: planned first, random init, every label
    chance = max(map(test.count, set(test))) / len(test)  # always guessing the test split's largest class
    table = ["| labels | backbone | protocol | draws | test accuracy, mean ± std | min to max |", "| --- " * 6 + "|"]
    table += [f"| {r['labels']:,} | {r['backbone']} | {r['protocol']} | {r['seeds']} | {100 * r['mean']:.1f}% ± "
              f"{100 * r['std']:.1f} | {100 * r['min']:.1f} to {100 * r['max']:.1f} |" for r in summary]
    runner.write_results(args, "label-efficiency", {"chance": chance, "num_test": len(test), "runs": records,
                                                    "summary": summary}, table,
                         [*([] if args.checkpoint else [path.parent for path in checkpoints.values()]), *planned])
    plot(summary, backbones, bound, chance, args.results / "label-efficiency.png")

if __name__ == "__main__":
    main()
