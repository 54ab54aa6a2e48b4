#!/bin/bash
# aibro-rs: the boot script (EC2 user data) of one instance.
# It finds aibro-agent on the AMI (or downloads it and checks its sha256),
# installs the scheduler's CA, and starts the agent as a systemd service that
# also starts at every later boot (a stopped instance started again).
# It holds nothing that is valid after boot: the bootstrap token below is
# traded for the agent's own credential at its first registration, and refused
# from then on. Every path is under $AIBRO_ROOT (empty on a real instance).
set -euo pipefail

ROOT="${AIBRO_ROOT:-}"
SYSTEMCTL="${AIBRO_SERVICE_CMD:-systemctl}"
IMDS="${AIBRO_IMDS_ENDPOINT:-http://169.254.169.254}"
LISTEN="${AIBRO_LISTEN:-0.0.0.0:7071}"
CONF="$ROOT/etc/aibro"
DATA="$ROOT/var/lib/aibro/agent"
UNIT="$ROOT/etc/systemd/system/aibro-agent.service"
SCHEDULER_URL={{SCHEDULER_URL}}
INSTANCE_ID={{INSTANCE_ID}}
MACHINE_ID={{MACHINE_ID}}
BOOTSTRAP_TOKEN={{BOOTSTRAP_TOKEN}}
AGENT_ARGS={{AGENT_ARGS}}
AGENT_URL={{AGENT_URL}}
AGENT_SHA256={{AGENT_SHA256}}

mkdir -p "$CONF" "$DATA" "$ROOT/usr/local/bin" "$(dirname "$UNIT")"
chmod 700 "$CONF" "$DATA"

# 1. The agent: on the AMI, else downloaded and checked.
AGENT="$(command -v aibro-agent || true)"
if [ -z "$AGENT" ]; then
    if [ -z "$AGENT_URL" ]; then
        echo "aibro-agent is not on this AMI and the scheduler gave no --ec2-agent-url" >&2
        exit 1
    fi
    AGENT="$ROOT/usr/local/bin/aibro-agent"
    curl -fsSL --retry 5 -o "$AGENT.download" "$AGENT_URL"
    echo "$AGENT_SHA256  $AGENT.download" | sha256sum -c --quiet
    chmod 755 "$AGENT.download"
    mv "$AGENT.download" "$AGENT"
fi

# 2. This instance's address, from the metadata service (IMDSv2).
IMDS_TOKEN="$(curl -fsS -X PUT "$IMDS/latest/api/token" \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')"
ADDRESS="$(curl -fsS -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" \
    "$IMDS/latest/meta-data/local-ipv4")"

# 3. The scheduler's CA (public), and the agent's settings; the token is
#    readable by root only and useless once traded.
CA_PEM={{CA_PEM}}
TLS_CA_ARG=""
if [ -n "$CA_PEM" ]; then
    printf '%s\n' "$CA_PEM" > "$CONF/ca.pem"
    TLS_CA_ARG="--tls-ca $CONF/ca.pem"
fi
umask 077
cat > "$CONF/agent.env" <<ENV
AIBRO_SCHEDULER=$SCHEDULER_URL
AIBRO_INSTANCE_ID=$INSTANCE_ID
AIBRO_MACHINE_ID=$MACHINE_ID
AIBRO_JOIN_TOKEN=$BOOTSTRAP_TOKEN
AIBRO_DIR=$DATA
AIBRO_LISTEN=$LISTEN
AIBRO_ADVERTISE_HOST=$ADDRESS
AIBRO_IMDS_ENDPOINT=$IMDS
ENV
umask 022

# 4. The service, started now and at every boot.
cat > "$UNIT" <<UNIT
[Unit]
Description=aibro-rs agent
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=$CONF/agent.env
ExecStart=$AGENT $TLS_CA_ARG $AGENT_ARGS
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
"$SYSTEMCTL" daemon-reload
"$SYSTEMCTL" enable --now aibro-agent.service
