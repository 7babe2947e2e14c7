#!/usr/bin/env bash
# Shared body of scripts/{e2e,webnlg,dart}.sh: the paper's protocol for one dataset, through nlg.pipeline.
# Usage: run_protocol.sh DATASET [trainer args...]
# Environment: MODEL (gpt2-medium), METHOD (lora), NPROC (1), NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT
# (multi-node torchrun), RUN_DIR, RAW_DIR, SPLIT (test), TRAIN_FROM (train), TRAIN_LIMIT/VALID_LIMIT/TEST_LIMIT,
# GENERATE_ARGS (one string of extra nlg.generate flags), SEEDS ("110 111 112": one run folder per seed,
# RUN_DIR-s<seed> trained with --seed <seed>, then a report across them with mean ± std in RUN_DIR-seeds/).
# Re-running resumes where it stopped.
set -euo pipefail
dataset="$1"; shift
cd "$(dirname "$0")/.."
args=(--dataset "$dataset" --model "${MODEL:-gpt2-medium}" --method "${METHOD:-lora}"
      --nproc "${NPROC:-1}" --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}"
      --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}"
      --split "${SPLIT:-test}" --train-from "${TRAIN_FROM:-train}")
[ -n "${RUN_DIR:-}" ] && args+=(--run-dir "$RUN_DIR")
[ -n "${RAW_DIR:-}" ] && args+=(--raw-dir "$RAW_DIR")
[ -n "${TRAIN_LIMIT:-}" ] && args+=(--train-limit "$TRAIN_LIMIT")
[ -n "${VALID_LIMIT:-}" ] && args+=(--valid-limit "$VALID_LIMIT")
[ -n "${TEST_LIMIT:-}" ] && args+=(--test-limit "$TEST_LIMIT")
[ -n "${GENERATE_ARGS:-}" ] && args+=(--generate-args "$GENERATE_ARGS")
# shellcheck disable=SC2206  # SEEDS is a space-separated list of integers
[ -n "${SEEDS:-}" ] && args+=(--seeds ${SEEDS})
exec "${PYTHON:-python3}" -m nlg.pipeline "${args[@]}" -- "$@"
