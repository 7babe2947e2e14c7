#!/usr/bin/env bash
# The whole E2E pipeline on CPU in a few minutes, on a model that has learned English here:
# pretrain a tiny GPT-2 (2 layers, 64 wide; WebNLG + DART text, no E2E; cached after the first run) ->
# prepare -> train (LoRA r = 16 on all six projections and the tied token embedding, lr 5e-3: what a 64-wide model
# whose corpus never held E2E's words needs; LoRA on W_q, W_v alone gave BLEU 0) -> merge + beam search ->
# reference/hypothesis files -> scores -> report.
# Data: RAW_DIR if set; ../shared/data when present (its E2E train split is absent, so the dev split trains);
# the official files when online; otherwise a synthetic E2E-style sample generated here (labelled synthetic).
# Pretraining corpus: ../shared/data when present, else a template corpus generated here (labelled). The tiny model
# pretrains in fp32 (PRETRAIN_PRECISION): cheap at its size, and the same recipe on every CPU make (bf16 where a
# CPU has it natively gave another model and BLEU 19.5 instead of 23.6 on the same records).
# With a GPU and the hub: MODEL=gpt2-medium bash scripts/e2e.sh is the real reproduction.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# The 64-wide model is sensitive to rounding: fp32 kernels that differ by CPU make (MKL's and ATen's AVX-512 paths)
# give another tiny model and another BLEU, so both are pinned to their AVX2 paths (MKL's conditional numerical
# reproducibility, ATen's dispatch); figures per CPU in results/quickstart/README.md.
# MKL_CBWR=AUTO ATEN_CPU_CAPABILITY=avx512 restores an AVX-512 CPU's own paths.
export MKL_CBWR="${MKL_CBWR-AVX2}" ATEN_CPU_CAPABILITY="${ATEN_CPU_CAPABILITY-avx2}"
corpus=shared; [ -d ../shared/data/webnlg_challenge_2017 ] || [ -d ../shared/data/dart ] || corpus=generated
if [ -z "${MODEL:-}" ]; then
  MODEL="$("$PY" -m nlg.pretrain --card tiny --corpus "$corpus" --max-steps "${PRETRAIN_STEPS:-200}" --block-size 128 \
           --batch-size 16 --lr 5e-3 --warmup-steps 20 --precision "${PRETRAIN_PRECISION:-fp32}" --quiet | tail -n 1)"
fi
export MODEL METHOD="${METHOD:-lora}" RUN_DIR="${RUN_DIR:-runs/quickstart-e2e}"
if [ -z "${RAW_DIR:-}" ] && [ -d ../shared/data/e2e ] && [ ! -f ../shared/data/e2e/train.txt ]; then
  export TRAIN_FROM="${TRAIN_FROM:-valid}"
fi
export TRAIN_LIMIT="${TRAIN_LIMIT:-960}" VALID_LIMIT="${VALID_LIMIT:-100}" TEST_LIMIT="${TEST_LIMIT:-40}"
export GENERATE_ARGS="${GENERATE_ARGS:---batch-size 8}"
bash scripts/e2e.sh --max-steps "${STEPS:-400}" --warmup-steps 20 --rank 16 --lr 5e-3 \
  --lora-targets "${LORA_TARGETS:-q,k,v,o,c_fc,c_proj,wte}" --save-interval 200 --log-interval 20 "$@"
echo
head -n 5 "$RUN_DIR/report.md"
