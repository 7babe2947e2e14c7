#!/usr/bin/env bash
# The paper's Table 3 at CPU scale (issue 13): pretrain a small GPT-2 here (cached), adapt it on E2E with every
# method plus two controls, beam-search the full test split, score all five metrics, write one combined report.
#   bash scripts/cpu_table3.sh [nlg.cpu_table3 flags, e.g. --rows lora ft --seeds 110]
# Default rows: the paper's methods at its recipe and both controls; --rows all adds every tuned row.
# Outputs: run folders under OUT (runs/cpu-table3), the report under REPORT_DIR (results/cpu_table3).
# Re-running skips finished stages and resumes interrupted training.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NLTK_DATA:-}" ] && [ -d ../shared/nltk_data ]; then export NLTK_DATA="$(cd .. && pwd)/shared/nltk_data"; fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
start=$(date +%s)
export NLG_TABLE_COMMAND="bash scripts/cpu_table3.sh${*:+ $*}"
"${PYTHON:-python3}" -m nlg.cpu_table3 --out "${OUT:-runs/cpu-table3}" --report-dir "${REPORT_DIR:-results/cpu_table3}" "$@"
secs=$(( $(date +%s) - start ))
echo "cpu_table3.sh: whole script $((secs / 60)) min $((secs % 60)) s (budget 90 min; pretraining included unless it was cached)"
