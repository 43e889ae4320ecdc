#!/usr/bin/env bash
# Entrypoint of the hospital image (clients/Dockerfile): clients/deploy.sh with the container's
# mount points as defaults. Set FEDHEALTH_HOSPITAL (the hospital's name in the study) and FEDHEALTH_SUPERLINK
# (HOST:PORT of the study's SuperLink); override any other FEDHEALTH_* variable, or pass options, as
# clients/deploy.sh --help describes. Outside a container it runs the same way from a checkout.
set -euo pipefail
: "${FEDHEALTH_DATA:=/data/data.csv}"
: "${FEDHEALTH_SCHEMA:=/data/schema.toml}"
: "${FEDHEALTH_POLICY:=/etc/fedhealth/policy.toml}"
: "${FEDHEALTH_CA:=/etc/fedhealth/ca.crt}"
: "${FEDHEALTH_KEY:=/etc/fedhealth/key/supernode_auth}"
: "${FEDHEALTH_LEDGER_DIR:=/var/lib/fedhealth/ledger}"
: "${FEDHEALTH_AUDIT_LOG:=/var/lib/fedhealth/audit/audit.jsonl}"
: "${FLWR_HOME:=/var/lib/fedhealth/flwr-home}"
export FEDHEALTH_DATA FEDHEALTH_SCHEMA FEDHEALTH_POLICY FEDHEALTH_CA FEDHEALTH_KEY FEDHEALTH_LEDGER_DIR \
  FEDHEALTH_AUDIT_LOG FLWR_HOME
exec bash "$(dirname "${BASH_SOURCE[0]}")/deploy.sh" "$@"
