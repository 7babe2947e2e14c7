#!/usr/bin/env bash
# E2E NLG Challenge with the paper's protocol: prepare -> train -> merge + beam search on test -> reference/hypothesis
# files -> official-equal scores -> report, all in one run folder. Resumable: re-run after an interruption.
#   MODEL=gpt2-large METHOD=lora NPROC=4 bash scripts/e2e.sh [extra trainer flags]
# See scripts/run_protocol.sh for every environment variable.
exec "$(dirname "$0")/run_protocol.sh" e2e "$@"
