#!/usr/bin/env bash
# Set up the environment (first run only), generate the demo chest CT and its report, and segment
# the findings the report describes with the bundled demo model: writes demo/case.seg.nrrd.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
tmca info
tmca synth --output demo/data --cases 1 --modality ct --dims 3 --seed 7
image=$(ls demo/data/images/*.nii.gz | head -n 1)
case_id=$(basename "$image" .nii.gz)
echo "report: $(cat "demo/data/reports/$case_id.txt")"
tmca segment "$image" --report-file "demo/data/reports/$case_id.txt" --output demo/case.seg.nrrd --probability demo/case-probability.nrrd
echo "wrote demo/case.seg.nrrd (open it in 3D Slicer over $image)"
