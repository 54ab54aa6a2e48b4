#!/usr/bin/env bash
# Installs what `aibro-bench predict` needs beside cargo's binaries; idempotent:
# wrk (the HTTP load generator of every HTTP row; apt-get, as root or with sudo)
# and a venv with ray[serve] for the Ray Serve peer.
#   bench/peers/setup-ray.sh [VENV]   (default target/peers/ray-venv, relative to the repo root)
# Prints the venv's python path last.
set -euo pipefail
if ! command -v wrk >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y wrk >/dev/null || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y wrk >/dev/null; }
fi
cd "$(dirname "$0")/../.."
venv="${1:-target/peers/ray-venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c 'import ray.serve' >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet 'ray[serve]==2.60.0'
fi
cd "$venv" && echo "$PWD/bin/python"
