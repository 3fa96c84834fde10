#!/usr/bin/env bash
# Reproduce the bundled demo model (Resources/Models/tmca-demo) on CPU: synthetic chest CTs,
# a seeded training run of at most 28 minutes, the grounding check, then the copy into Resources.
# The final checkpoint (end of the cosine schedule) is the one shipped, not the best on the small
# validation sample: see the model card.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
tmca synth --output runs/demo-data --cases 300 --modality ct --dims 3 --seed 0 --subset-fraction 0.8 --reports-per-case 3
tmca train --data runs/demo-data --format csv --output runs/demo --modality CT --plane coronal --image-size 128 \
  --epochs 26 --steps-per-epoch 80 --batch-size 16 --lr 1e-3 --seed 0 --patience 8 --time-limit 28
python bench/demo_grounding.py --model runs/demo/last --data runs/demo-data --format csv --json runs/demo/grounding.json \
  --per-case runs/demo/grounding-cases.csv
rm -rf Resources/Models/tmca-demo.new
cp -r runs/demo/last Resources/Models/tmca-demo.new
cp Resources/Models/tmca-demo/README.md Resources/Models/tmca-demo.new/ 2>/dev/null || true
rm -rf Resources/Models/tmca-demo && mv Resources/Models/tmca-demo.new Resources/Models/tmca-demo
echo "installed Resources/Models/tmca-demo; update its README.md with runs/demo/grounding.json"
