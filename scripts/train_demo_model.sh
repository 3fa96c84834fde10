#!/usr/bin/env bash
# Reproduce the bundled demo model (Resources/Models/tmca-demo) on CPU, in two stages:
#   1. the previous demo model (commit 27da6d3: the 128-64-32-16-8 decoder, no click inputs), trained
#      from ImageNet weights by this script as it was at that commit (seeded; two runs gave
#      bit-identical weights), taken here from git history instead of training it again;
#   2. the current architecture (128-64-32-24-16 decoder with text gates at strides 2 and 1, click
#      inputs) started from those weights wherever they fit (--init-weights: 99.1% of the parameters)
#      and trained with simulated corrective clicks.
# Then the grounding and clicks-to-Dice checks and the copy into Resources. The final checkpoint (end
# of the cosine schedule) is the one shipped: see the model card.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
stage1_commit=27da6d3
tmca synth --output runs/demo-data --cases 300 --modality ct --dims 3 --seed 0 --subset-fraction 0.8 --reports-per-case 3
rm -rf runs/demo-stage1 && mkdir -p runs/demo-stage1
git archive "$stage1_commit" Resources/Models/tmca-demo | tar -x --strip-components=3 -C runs/demo-stage1
tmca train --data runs/demo-data --format csv --output runs/demo --modality CT --plane coronal --image-size 128 \
  --steps 800 --steps-per-epoch 80 --batch-size 16 --lr 5e-4 --seed 0 --patience 8 \
  --click-training --init-weights runs/demo-stage1
python bench/demo_grounding.py --model runs/demo/last --data runs/demo-data --format csv --json runs/demo/grounding.json \
  --per-case runs/demo/grounding-cases.csv
python bench/interactive.py --model runs/demo/last --data runs/demo-data --format csv --cases 20 --json runs/demo/interactive.json
rm -rf Resources/Models/tmca-demo.new
cp -r runs/demo/last Resources/Models/tmca-demo.new
cp Resources/Models/tmca-demo/README.md Resources/Models/tmca-demo.new/ 2>/dev/null || true
rm -rf Resources/Models/tmca-demo && mv Resources/Models/tmca-demo.new Resources/Models/tmca-demo
echo "installed Resources/Models/tmca-demo; update its README.md with runs/demo/grounding.json and runs/demo/interactive.json"
