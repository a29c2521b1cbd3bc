#!/usr/bin/env bash
# The whole job in one command: set up .venv, pretrain SimSiam, train the 250-label classifier over a random
# and over the SimSiam backbone, plot, and print the results table and what to run next.
#   bash experiments/quickstart.sh                     # data/PetImages when it is there, else the --demo set
#   bash experiments/quickstart.sh --data DIR [FLAGS]  # your photos; FLAGS go to train.py and classifier.py
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
python=.venv/bin/python
if [ "${1:-}" = "--data" ]; then
  data=(--data "$2"); shift 2
elif [ -d data/PetImages ]; then
  data=(--data data/PetImages)
else
  echo "data/PetImages not found: running on the synthetic --demo set (see README, Data)"; data=(--demo)
fi
# --overwrite: a second quick start replaces the first one's runs
$python train.py "${data[@]}" --overwrite "$@"
$python classifier.py "${data[@]}" --random --overwrite "$@"
$python classifier.py "${data[@]}" --overwrite "$@"
$python plot.py runs/simsiam runs/classifier-random-frozen runs/classifier-simsiam-frozen
$python pictures.py "${data[@]}"
cat <<EOF

Plots: runs/plots/simsiam.png (loss, collapse metric, kNN), runs/plots/classifier.png (probes),
       runs/plots/views.png, neighbours.png, features.png (what the backbone learned).
EOF
if [ "${data[0]}" = "--demo" ]; then cat <<EOF
What this shows: the whole chain running on this machine, and what each file and plot looks like. What it does
not show: that SimSiam pays. A few hundred SimSiam steps on a CPU are far too few, so on the demo set the two
probes differ by noise, either way round. The evidence has to come from a GPU run on real photos (README,
Results).
EOF
fi
cat <<EOF
Next, on real photos (a GPU; see README, Pipeline):
  source .venv/bin/activate
  python train.py --data data/PetImages --download     # fetch Microsoft's archive (787 MB) and pretrain
  python classifier.py --data data/PetImages --random  # and without --random; then python plot.py
  python predict.py my-photo.jpg                       # classify a photo with runs/classifier-simsiam-frozen
EOF
