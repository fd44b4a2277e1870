#!/usr/bin/env bash
# Install ztplan for the next steps of a workflow job: a venv of its own, put on PATH.
#
#   scripts/ci-install.sh [--system]
#
# ZTPLAN_INSTALL says what pip installs: "." (this repository, the default) or, in a fleet
# repository that holds only specs, a pinned release such as "ztplan==0.1.0". Pin it: a
# plan saved by one version is refused by another, and the PR's plan must apply after merge.
# --system also installs what ztplan drives, on GitHub's hosted runners (gateways have it).
set -euo pipefail
if [[ "${1:-}" == --system ]]; then
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables nftables ndppd iproute2 >/dev/null
fi
venv="${RUNNER_TEMP:?run inside a GitHub Actions job}/ztplan-venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q "${ZTPLAN_INSTALL:-.}"
echo "$venv/bin" >>"${GITHUB_PATH:?}"
