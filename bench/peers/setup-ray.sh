#!/usr/bin/env bash
# Makes a venv with ray[serve] for the Ray Serve peer of aibro-bench; idempotent.
#   bench/peers/setup-ray.sh [VENV]   (default target/peers/ray-venv, relative to the repo root)
# Prints the venv's python path last.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${1:-target/peers/ray-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c 'import ray.serve' >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet 'ray[serve]==2.60.0'
fi
cd "$venv" && echo "$PWD/bin/python"
