#!/usr/bin/env bash
# Train several families on the same data and budget, export, evaluate and compare them.
#
#   bash benchmarks/compare_families.sh OUT "name family [--set k=v ...]" ["name family ..."] ...
#
# Budget and data from the environment (defaults: seed 003's comparison at CPU scale):
#   DATA="prepared/taiwanese prepared/lfw"  SIZE=64  PRESET=small  BATCH=8  STEPS=40  LIMIT=20
# Every run uses the same data folders, identity-disjoint split, size, preset, batch and number
# of steps (so the same number of images seen); evaluation uses the same validation faces and
# judge. Runs already exported under OUT are not trained again.
set -euo pipefail
out=$1; shift
read -r -a data <<< "${DATA:-prepared/taiwanese prepared/lfw}"
data_args=(); for d in "${data[@]}"; do data_args+=(--data "$d"); done
size=${SIZE:-64}; preset=${PRESET:-small}; batch=${BATCH:-8}; steps=${STEPS:-40}; limit=${LIMIT:-20}
mkdir -p "$out"
evals=()
for spec in "$@"; do
  read -r -a words <<< "$spec"
  name=${words[0]}; family=${words[1]}; extra=("${words[@]:2}")
  if [ ! -f "$out/models/$name/config.json" ]; then
    start=$(date +%s)
    facexpr train --model "$family" "${data_args[@]}" --out "$out/runs/$name" --preset "$preset" --size "$size" \
      --batch "$batch" --steps "$steps" --sample-every "$steps" --checkpoint-every "$steps" --no-progress "${extra[@]}"
    echo "$name: $(( $(date +%s) - start )) s of training" | tee -a "$out/budget.txt"
    facexpr export "$out/runs/$name" "$out/models/$name"
  fi
  [ -f "$out/eval/$name/metrics.json" ] || \
    facexpr evaluate --model "$out/models/$name" "${data_args[@]}" --out "$out/eval/$name" --limit "$limit" --quiet
  evals+=("$out/eval/$name")
done
facexpr compare "${evals[@]}" -o "$out/compare"
