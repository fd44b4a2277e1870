#!/usr/bin/env bash
# Check one target for drift and keep the outcome for the job that files the issues
# (it runs on a hosted runner, with `gh`; gateways need neither gh nor write access).
#
#   scripts/drift-check.sh OUT_DIR TARGET SPEC [ZTPLAN_DRIFT_OPTIONS]
#
# Writes OUT_DIR/target, OUT_DIR/status (clean, drift or error: ztplan drift's exit 0, 2,
# 1) and OUT_DIR/drift.md. Exits 1 on error only: drift is a finding, an error a red run.
set -uo pipefail
out=$1 target=$2 spec=$3
shift 3
mkdir -p "$out"
echo "$target" >"$out/target"
ztplan drift "$spec" --format markdown "$@" >"$out/drift.md" 2>"$out/error.txt"
case $? in
  0) status=clean ;;
  2) status=drift ;;
  *) status=error ;;
esac
echo "$status" >"$out/status"
cat "$out/error.txt" >&2
{ echo "### ztplan drift: $target: $status"; cat "$out/drift.md" "$out/error.txt"; } >>"${GITHUB_STEP_SUMMARY:-/dev/null}"
[[ $status != error ]]
