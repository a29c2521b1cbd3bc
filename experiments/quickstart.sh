#!/usr/bin/env bash
# The whole job in one command: set up .venv, pretrain SimSiam, train the 250-label classifier over a random
# and over the SimSiam backbone, plot. Uses data/PetImages when it is there, else the synthetic --demo set.
#   bash experiments/quickstart.sh            # extra arguments go to train.py and classifier.py
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
if [ -d data/PetImages ]; then data=(--data data/PetImages); else
  echo "data/PetImages not found: running on the synthetic --demo set (see README, Data)"; data=(--demo); fi
# --overwrite: a second quick start replaces the first one's runs
.venv/bin/python train.py "${data[@]}" --overwrite "$@"
.venv/bin/python classifier.py "${data[@]}" --random --overwrite "$@"
.venv/bin/python classifier.py "${data[@]}" --overwrite "$@"
.venv/bin/python plot.py runs/simsiam runs/classifier-random-frozen runs/classifier-simsiam-frozen
