#!/usr/bin/env bash
# DART v1.1.1 with the paper's protocol: prepare -> train -> merge + beam search on test -> reference/hypothesis
# files -> official-equal scores -> report, all in one run folder. Resumable: re-run after an interruption.
#   MODEL=gpt2-large METHOD=lora NPROC=4 bash scripts/dart.sh [extra trainer flags]
# See scripts/run_protocol.sh for every environment variable.
exec "$(dirname "$0")/run_protocol.sh" dart "$@"
