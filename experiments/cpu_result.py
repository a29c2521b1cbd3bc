"""The result on a CPU: SimSiam pretraining with train.py --cpu (under an hour on 2 cores for the 23,000-photo pack),
then the frozen probes of 250 labels (SGD linear and closed-form) over it and over random init, paired on the same
held-out test images, per label draw; plot.py.

    python -m experiments.cpu_result                      # data/PetImages, train.py --cpu
    python -m experiments.cpu_result --tiny               # CPU smoke run on the --demo set, in seconds
    python -m experiments.cpu_result --runs runs/cpu-48px --results results/cpu-48px -- --image-size 48 --epochs 12
                                                          # another configuration: train.py's flags after --

The verdict is over the label draws (one moves the difference a few points either way): SimSiam ahead by MARGIN and
STANDARD_ERRORS paired standard errors. Reuses finished runs. Writes RESULTS/cpu-result.json, .md and small files.
"""
from __future__ import annotations

import runs
from experiments import runner

MARGIN, STANDARD_ERRORS = 0.05, 3  # the least difference that counts as SimSiam paying: in accuracy, and in SEs

def parse_args(argv=None):
    return runner.parse(runner.parser(__doc__, "runs/cpu-result"), argv)

@runs.reports_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    rows, folders = runner.compare(args, runner.pretrained(args, ["--cpu"]), ("frozen",))
    rows = [{**row, "meets_target": row["difference"] >= max(MARGIN, STANDARD_ERRORS * row["standard_error"])}
            for row in rows]
    verdicts = [f"verdict, {row['protocol']}, {row['backbone']}: SimSiam "
                f"{('does not beat', 'beats')[row['meets_target']]} random init by {100 * MARGIN:.0f} points and "
                f"{STANDARD_ERRORS} paired standard errors over {row['draws']} label draws" for row in rows]
    runner.write_results(args, "cpu-result", {"margin": MARGIN, "standard_errors": STANDARD_ERRORS, "rows": rows},
                         [*runner.paired_table(rows), "", *verdicts], folders)

if __name__ == "__main__":
    main()
