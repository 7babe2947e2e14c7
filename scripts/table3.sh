#!/usr/bin/env bash
# Every method of the paper's Table 3 for one model size on one dataset (E2E by default), each with the size
# flags whose trainable-parameter count lands nearest the paper's figure (nlg/methods/counts.py), then one
# combined report beside the paper's numbers.
#   MODEL=gpt2-medium bash scripts/table3.sh [extra trainer flags]        (DATASET=e2e|webnlg|dart)
# Every variable of scripts/run_protocol.sh applies to each run; OUT_DIR (runs/table3-<dataset>-<model>) holds them.
set -euo pipefail
cd "$(dirname "$0")/.."
export MODEL="${MODEL:-gpt2-medium}"
dataset="${DATASET:-e2e}"
out="${OUT_DIR:-runs/table3-$dataset-$(basename "$MODEL")}"
card="$MODEL"; case "$card" in gpt2-medium|gpt2-large) ;; *) card=gpt2-medium ;; esac  # tiny/other: medium's sizes
mkdir -p "$out"
runs=()
while IFS=$'\t' read -r method tag flags; do
  run="$out/$tag"
  echo "[table3] $tag: METHOD=$method $flags"
  # shellcheck disable=SC2086
  METHOD="$method" RUN_DIR="$run" bash scripts/run_protocol.sh "$dataset" $flags "$@"
  runs+=("$run")
done < <("${PYTHON:-python3}" -m nlg.methods.counts --settings "$card")
"${PYTHON:-python3}" -m eval.report "${runs[@]}" --out "$out"
echo "[table3] combined report: $out/report.md"
