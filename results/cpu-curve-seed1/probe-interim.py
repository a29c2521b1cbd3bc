"""Seed 1 of the CPU curve, probed at the budgets it has reached (its 60-epoch schedule stopped and resumable):
the same classifier commands as experiments.cpu_result's (so that the finished runs are reused by it later), then
the same table, rows and verdicts into results/cpu-curve-seed1."""
import sys
from pathlib import Path

from experiments import cpu_result, runner

budgets = [int(b) for b in sys.argv[1:]]
args = cpu_result.parse_args(["--runs", "runs/cpu-curve", "--results", "results/cpu-curve-seed1", "--pretrain-seeds",
                              "1", "--budgets", *map(str, budgets), "--", "--image-size", "64", "--precision", "bf16",
                              "--batch-size", "64", "--epochs", "60", "--save-every", "1"])
checkpoints = {f"simsiam-seed1-epoch{e}": args.runs / "pretrain-seed1" / f"siam-epoch{e}.pt" for e in budgets}
rows, folders = runner.compare(args, checkpoints, ("frozen",))
rows = [{**row, "meets_target": row["difference"] >= max(cpu_result.MARGIN, cpu_result.STANDARD_ERRORS
                                                         * row["standard_error"]), **cpu_result.budget(args, row)}
        for row in rows]
verdicts = [f"verdict, {row['protocol']}, {row['backbone']}: SimSiam {('does not beat', 'beats')[row['meets_target']]}"
            f" random init by 5 points and 3 paired standard errors over {row['draws']} label draws, after "
            f"{row['epoch']} epochs ({row['minutes']:.0f} min)" for row in rows]
runner.write_results(args, "cpu-result", {"margin": cpu_result.MARGIN, "standard_errors": cpu_result.STANDARD_ERRORS,
                                          "rows": rows, "note": "the 60-epoch schedule stopped after epoch "
                                          f"{max(budgets)}; resumable"}, [*runner.paired_table(rows), "", *verdicts],
                     folders)
cpu_result.draw_curve(rows, args.results / "cpu-result-curve.png")
