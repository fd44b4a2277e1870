#!/usr/bin/env bash
# Plan every spec against the sandbox: a throwaway gateway (network namespace
# ztplan-sandbox) and a controller emulator, so a pull request shows what each spec would
# do to a fresh gateway without touching a real one. Run as root (namespaces, iptables).
#
#   scripts/sandbox-plan.sh OUT_DIR SPEC...
#
# Informational: the emulator knows only the example network, so a fleet's own networks
# and token files cannot be planned here; those failures are warnings, not a red check
# (validation and the live plan on each gateway are the gates).
set -euo pipefail
out=$1
shift
ztplan sandbox up >/dev/null
# The emulator's token is throwaway, and exported here, never printed.
eval "$(ztplan sandbox env)"
python3 "$(dirname "$0")/plan-report.py" --marker ztplan-sandbox-plan \
  --title "Plans against the sandbox (a fresh gateway; informational)" \
  --out "$out" --keep-going "$@" -- --netns ztplan-sandbox
