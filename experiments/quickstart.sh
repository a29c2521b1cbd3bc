#!/usr/bin/env bash
# The whole job in one command: set up .venv, pretrain SimSiam, train the 250-label classifier over a random
# and over the SimSiam backbone, plot, and print the results table and what to run next. Its runs go to
# runs/demo/ (the --demo set) or runs/quickstart/ (your photos), never where the pipeline's own runs go.
#   bash experiments/quickstart.sh                     # data/PetImages when it is there, else the --demo set
#   bash experiments/quickstart.sh --data DIR [FLAGS]  # your photos; FLAGS go to train.py and classifier.py,
#                                                      # and those of the data and the device to pictures.py too
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt
elif ! problem=$(.venv/bin/python -c "import torchvision.ops" 2>&1); then  # e.g. a torchvision built for another torch
  echo "error: .venv cannot import torch and torchvision together ($(tail -n 1 <<<"$problem")): rm -rf .venv and" \
       "run this again, which installs them afresh" >&2
  exit 1
fi
python=.venv/bin/python
if [ "${1:-}" = "--data" ]; then
  data=(--data "$2"); shift 2
elif [ -d data/PetImages ]; then
  data=(--data data/PetImages)
else
  echo "data/PetImages not found: running on the synthetic --demo set (see docs/data.md)"; data=(--demo)
fi
[ "${data[0]}" = "--demo" ] && out=runs/demo || out=runs/quickstart
# the flags that also reach pictures.py: those that choose the data, its split and the device
shared=() rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cache-dir|--limit|--workers|--split-seed|--test-fraction|--val-fraction|--labels|--label-seed|--device|\
    --precision)
      shared+=("$1" "$2"); rest+=("$1" "$2"); shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
set -- "${rest[@]+"${rest[@]}"}"
# --overwrite: a second quick start replaces the first one's runs
$python train.py "${data[@]}" --out $out/simsiam --overwrite "$@"
$python classifier.py "${data[@]}" --random --out $out/classifier-random-frozen --overwrite "$@"
$python classifier.py "${data[@]}" --checkpoint $out/simsiam/siam.pt --out $out/classifier-simsiam-frozen \
  --overwrite "$@"
$python plot.py $out/simsiam $out/classifier-random-frozen $out/classifier-simsiam-frozen --out $out/plots
$python pictures.py "${data[@]}" --checkpoint $out/simsiam/siam.pt --out $out/plots "${shared[@]+"${shared[@]}"}"
cat <<END

Plots: $out/plots/simsiam.png (loss, collapse metric, kNN), $out/plots/classifier.png (probes),
       $out/plots/views.png, neighbours.png, features.png (what the backbone learned).
END
if [ "${data[0]}" = "--demo" ]; then cat <<END
What this shows: the whole chain running on this machine, and what each file and plot looks like. What it does
not show: whether SimSiam pays. A few hundred CPU steps do not train SimSiam, and on 200 test images the two
probes can differ by up to ~10 points either way: one run's difference is not a result. On real photos:
python -m experiments.cpu_result (about 3 hours on 2 cores; the README's first section says what it gave) and,
on a GPU, python -m experiments.headline.
END
fi
cat <<END
Next, on real photos:
  source .venv/bin/activate
  python -m experiments.cpu_result                     # a CPU: SimSiam against random init in about 3 hours
  python train.py --data data/PetImages --download     # fetch Microsoft's archive (787 MB) and pretrain
  python classifier.py --data data/PetImages --random  # and without --random; then python plot.py
  python predict.py my-photo.jpg --checkpoint $out/classifier-simsiam-frozen/classifier.pt   # a photo, now
END
