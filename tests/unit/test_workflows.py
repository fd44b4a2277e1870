"""The GitHub workflows: actionlint passes, and each has the triggers, permissions and
concurrency the GitOps loop relies on (docs/gitops.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
NAMES = ("ci", "plan", "apply", "drift")


def load(name: str) -> dict[str, Any]:
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / f"{name}.yml").read_text())
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def jobs(name: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load(name)["jobs"]
    return found


def runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job.get("steps", []) if "run" in step]


def on_gateway(job: dict[str, Any]) -> bool:
    return "self-hosted" in (job["runs-on"] if isinstance(job["runs-on"], list) else [])


def actionlint() -> str | None:
    beside = Path(sys.executable).parent / "actionlint"  # the venv's, when not on PATH
    return shutil.which("actionlint") or (str(beside) if beside.exists() else None)


def test_the_four_workflows_and_nothing_else() -> None:
    assert sorted(p.stem for p in WORKFLOWS.glob("*.y*ml")) == sorted(NAMES)


@pytest.mark.skipif(actionlint() is None, reason="actionlint is not installed")
def test_actionlint_passes() -> None:
    done = subprocess.run(
        [str(actionlint()), "-no-color", *sorted(map(str, WORKFLOWS.glob("*.yml")))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_triggers() -> None:
    assert set(load("ci")["on"]) == {"push", "pull_request"}
    # pull_request, never pull_request_target: that runs with secrets and a write token
    # on code from forks, and plan.yml runs on gateways.
    assert set(load("plan")["on"]) == {"pull_request"}
    apply_on = load("apply")["on"]
    assert apply_on["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in apply_on
    drift_on = load("drift")["on"]
    assert drift_on["schedule"][0]["cron"].split()[1:] == ["*", "*", "*", "*"]  # hourly


def test_ci_runs_what_ci_run_runs_as_root() -> None:
    (test,) = jobs("ci").values()
    assert runs(test) == ["sudo bash .ci/run"]


# The only write permissions in the loop, by workflow and job.
WRITES = {
    "ci": set(),
    "plan": {("comment", "pull-requests")},
    "apply": set(),
    "drift": {("issues", "issues")},
}


@pytest.mark.parametrize("name", NAMES)
def test_least_privilege_permissions(name: str) -> None:
    workflow = load(name)
    top = workflow["permissions"]  # always explicit: the default token can write a lot
    assert top in ({}, {"contents": "read"})
    writes = set()
    for job_name, job in workflow["jobs"].items():
        granted = job.get("permissions", top)
        assert granted not in ("write-all", "read-all"), job_name
        writes |= {(job_name, scope) for scope, level in granted.items() if level == "write"}
        if on_gateway(job):  # code from the branch runs there as root: read only
            assert set(granted.items()) <= {("contents", "read"), ("actions", "read")}, job_name
    assert writes == WRITES[name]


def test_plan_comments_and_skips_forks_on_gateways() -> None:
    plan = jobs("plan")
    assert plan["comment"]["permissions"]["pull-requests"] == "write"
    assert any("pr-comment.py" in r for r in runs(plan["comment"]))
    fork_check = "github.event.pull_request.head.repo.full_name == github.repository"
    assert fork_check in plan["live"]["if"]
    assert fork_check in plan["comment"]["if"]
    assert any("--save-plan" in r for r in runs(plan["live"]))  # what apply.yml looks for
    assert any("sandbox-plan.sh" in r for r in runs(plan["sandbox"]))


def test_apply_one_at_a_time_per_target() -> None:
    apply = jobs("apply")["apply"]
    assert apply["concurrency"]["group"] == "ztplan-apply-${{ matrix.target }}"
    assert apply["concurrency"]["cancel-in-progress"] is False
    assert apply["runs-on"] == ["self-hosted", "${{ matrix.target }}"]
    checkout = apply["steps"][0]
    assert checkout["with"]["fetch-depth"] == 0  # the descendant check needs history
    assert any("apply-reviewed.py" in r and "--reviewed" in r for r in runs(apply))


@pytest.mark.parametrize("name", ("plan", "apply", "drift"))
def test_targets_come_from_the_specs(name: str) -> None:
    workflow = jobs(name)
    assert any("scripts/targets.py" in r for r in runs(workflow["targets"]))
    gateway_jobs = [job for job in workflow.values() if on_gateway(job)]
    assert gateway_jobs
    for job in gateway_jobs:
        assert job["runs-on"] == ["self-hosted", "${{ matrix.target }}"]
        assert job["strategy"]["matrix"] == "${{ fromJSON(needs.targets.outputs.live) }}"
        # GitHub refuses an empty matrix: the job must be skipped instead.
        assert "needs.targets.outputs.live-count != '0'" in job["if"]
        assert job["strategy"]["fail-fast"] is False
        assert "ZTPLAN_STATE_DIR" in job["env"]  # the state the drift timer shares


@pytest.mark.parametrize("name", NAMES)
def test_secrets_reach_only_step_environments(name: str) -> None:
    workflow = load(name)
    text = (WORKFLOWS / f"{name}.yml").read_text()
    assert "secrets." not in yaml.safe_dump(workflow.get("env", {}))
    for job in workflow["jobs"].values():
        assert "secrets." not in yaml.safe_dump(job.get("env", {}))
        for step in job.get("steps", []):
            # No ${{ }} inside scripts: values go through env, so neither a secret nor a
            # branch name can become shell code, or be echoed by `set -x`.
            assert "${{" not in step.get("run", ""), step
    for token in re.findall(r"secrets\.(\w+)", text):
        assert token == "ZEROTIER_CENTRAL_TOKEN"


@pytest.mark.parametrize("name", NAMES)
def test_every_script_called_exists(name: str) -> None:
    for job in jobs(name).values():
        for script in re.findall(r"scripts/[\w.-]+", " ".join(runs(job))):
            assert (ROOT / script).is_file(), script


def test_drift_files_issues_from_a_hosted_runner() -> None:
    drift = jobs("drift")
    assert any("drift-check.sh" in r for r in runs(drift["drift"]))
    issues = drift["issues"]
    assert not on_gateway(issues)  # gateways need neither gh nor a write token
    assert issues["needs"] == ["targets", "drift"]
    assert "!cancelled()" in issues["if"]  # after a failed check too
    assert any("drift-issue.py" in r for r in runs(issues))
