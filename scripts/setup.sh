#!/usr/bin/env bash
# Install what the project needs on a fresh machine: Java (METEOR 1.5), WordNet 3.0 (part of the CPU Table 3's
# pretraining corpus) and the Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
if ! command -v java >/dev/null 2>&1; then
  echo "[setup] installing Java (needed by METEOR 1.5)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq default-jre-headless >/dev/null
fi
if [ ! -f "${WORDNET_DIR:-/usr/share/wordnet}/data.noun" ]; then
  echo "[setup] installing WordNet 3.0 (Debian's wordnet-base: glosses for the CPU Table 3's pretraining corpus)"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wordnet-base >/dev/null; } ||
    echo "[setup] could not install wordnet-base: --corpus shared+wordnet will say how to point at WordNet"
fi
PY="${PYTHON:-python3}"
echo "[setup] installing Python packages from requirements.txt"
"$PY" -m pip install -q -r requirements.txt
echo "[setup] indexing METEOR's paraphrase table (once; lets METEOR load only what a scoring call can use)"
"$PY" -m eval.meteor_paraphrase build || echo "[setup] could not index it: METEOR will load the whole table (slower, same scores)"
