"""The headline: what 250 labels buy with SimSiam pretraining, against random init and the supervised bound.

    python -m experiments.headline                                   # a GPU: train.py's defaults on data/PetImages
    python -m experiments.headline --pretrain-seeds 0 1 2 -- --epochs 100 --image-size 96   # a spread over 3
    python -m experiments.headline --checkpoint runs/simsiam/siam.pt  # no pretraining
    python -m experiments.headline --tiny                            # CPU smoke run on the --demo set, in seconds

train.py per pretraining seed; classifier.py over random init and each SimSiam backbone, frozen (linear and
closed-form probes) and fine-tuned, per label draw, each protocol paired on the same test images; the supervised bound
(random init fine-tuned on every label); plot.py. Writes RESULTS/headline.json, .md and the runs' small files."""
import runs
from experiments import runner

def parse_args(argv=None):
    return runner.parse(runner.parser(__doc__, "runs/headline"), argv, "headline")

@runner.experiment
def main(argv=None) -> None:
    args = parse_args(argv)
    checkpoints, bound = runner.pretrained(args, []), args.runs / "supervised-all-labels"
    rows, folders = runner.compare(args, checkpoints, ("frozen", "finetune"), {bound: (
        "random", "finetune", [*runner.ALL_LABELS, "--epochs", "1" if args.tiny else str(args.supervised_epochs)])})
    spreads = {protocol: {key: runner.spread([row[key] for row in rows if row["protocol"] == protocol
                                              and row["backbone"] != "imagenet"])
                          for key in ("accuracy_a", "difference")} for protocol in runner.PROTOCOLS}
    accuracy = runs.final_record(bound / "metrics.jsonl")["test_accuracy"]
    lines = [*runner.paired_table(rows), f"| supervised bound, every label | | | {100 * accuracy:.1f}% | | | | |"]
    lines += [f"| {protocol} | {len(checkpoints)} pretraining seeds: mean ± std | | | "
              f"{100 * s['accuracy_a']['mean']:.1f}% ± {100 * s['accuracy_a']['std']:.1f} | "
              f"{100 * s['difference']['mean']:+.1f} ± {100 * s['difference']['std']:.1f} | | |"
              for protocol, s in spreads.items() if len(checkpoints) > 1]
    runner.write_results(args, "headline", {"rows": rows, "spread_over_pretraining_seeds": spreads,
                                            "supervised_accuracy": accuracy}, lines, folders)

if __name__ == "__main__":
    main()
