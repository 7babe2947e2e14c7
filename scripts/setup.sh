#!/usr/bin/env bash
# Install what the project needs on a fresh machine: Java (METEOR 1.5) and the Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
if ! command -v java >/dev/null 2>&1; then
  echo "[setup] installing Java (needed by METEOR 1.5)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq default-jre-headless >/dev/null
fi
PY="${PYTHON:-python3}"
echo "[setup] installing Python packages from requirements.txt"
"$PY" -m pip install -q -r requirements.txt
echo "[setup] indexing METEOR's paraphrase table (once; lets METEOR load only what a scoring call can use)"
"$PY" -m eval.meteor_paraphrase build || echo "[setup] could not index it: METEOR will load the whole table (slower, same scores)"
