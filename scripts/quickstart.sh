#!/usr/bin/env bash
# The whole E2E pipeline on the tiny randomly initialised GPT-2, on CPU, in a few minutes:
# prepare -> train (LoRA r=4 q,v) -> merge + beam search -> reference/hypothesis files -> scores -> report.
# Data: RAW_DIR if set; ../shared/data when present (its E2E train split is absent, so the dev split trains);
# the official files when online; otherwise a synthetic E2E-style sample generated here (labelled synthetic).
# With a GPU and the hub: MODEL=gpt2-medium bash scripts/e2e.sh is the real reproduction.
set -euo pipefail
cd "$(dirname "$0")/.."
export MODEL="${MODEL:-tiny}" METHOD="${METHOD:-lora}" RUN_DIR="${RUN_DIR:-runs/quickstart-e2e-tiny}"
if [ -z "${RAW_DIR:-}" ] && [ -d ../shared/data/e2e ] && [ ! -f ../shared/data/e2e/train.txt ]; then
  export TRAIN_FROM="${TRAIN_FROM:-valid}"
fi
export TRAIN_LIMIT="${TRAIN_LIMIT:-960}" VALID_LIMIT="${VALID_LIMIT:-100}" TEST_LIMIT="${TEST_LIMIT:-40}"
export GENERATE_ARGS="${GENERATE_ARGS:---batch-size 8}"
bash scripts/e2e.sh --max-steps "${STEPS:-120}" --warmup-steps 10 --save-interval 60 --log-interval 10 "$@"
echo
head -n 5 "$RUN_DIR/report.md"
