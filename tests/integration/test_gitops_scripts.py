"""The scripts the GitHub workflows call, run for real against a fake `gh` and a fake
`ztplan` on PATH that record their arguments; and the systemd units of contrib/."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any, Protocol

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
UNITS = ROOT / "contrib" / "systemd"

# A stand-in for `gh` or `ztplan`: logs each call (arguments, stdin, the ztplan and token
# variables) as a JSON line, and answers by the first rule whose text is in its arguments:
# [text, stdout, exit code] or [text, stdout, exit code, {"-o": what to write to `-o FILE`}].
FAKE = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
env = {{k: v for k, v in os.environ.items() if k.startswith(("ZTPLAN_", "ZEROTIER_"))}}
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
with open({log!r}, "a") as log:
    log.write(json.dumps({{"args": args, "stdin": stdin, "env": env}}) + "\\n")
for text, out, code, *files in json.load(open({answers!r})):
    if text in " ".join(args):
        for flag, content in (files[0] if files else {{}}).items():
            open(args[args.index(flag) + 1], "w").write(content)
        sys.stdout.write(out)
        sys.stderr.write(f"Error: {{text}} failed\\n" if code else "")
        sys.exit(code)
"""


class Fake:
    def __init__(self, bin_dir: Path, name: str) -> None:
        self.log = bin_dir / f"{name}.log"
        self.answers = bin_dir / f"{name}.answers.json"
        self.answers.write_text("[]")
        path = bin_dir / name
        path.write_text(
            FAKE.format(python=sys.executable, log=str(self.log), answers=str(self.answers))
        )
        path.chmod(0o755)

    def answer(self, *rules: list[Any]) -> None:
        self.answers.write_text(json.dumps(rules))

    def calls(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines]

    def commands(self) -> list[str]:
        return [call["args"][0] for call in self.calls()]

    def writes(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(method, path, JSON body) of each `gh api --method METHOD PATH --input -`."""
        found = []
        for call in self.calls():
            args = call["args"]
            if "--method" in args:
                at = args.index("--method")
                found.append((args[at + 1], args[at + 2], json.loads(call["stdin"])))
        return found


class Run(Protocol):
    def __call__(self, command: str, *more: str, **env: str) -> CompletedProcess[str]: ...


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


@pytest.fixture
def gh(bin_dir: Path) -> Fake:
    return Fake(bin_dir, "gh")


@pytest.fixture
def ztplan(bin_dir: Path) -> Fake:
    return Fake(bin_dir, "ztplan")


@pytest.fixture
def run(bin_dir: Path, tmp_path: Path) -> Run:
    """Run `SCRIPT ARGS` (split like a shell) in tmp_path with the fakes first on PATH,
    as a workflow run of acme/fleet would."""

    def call(command: str, *more: str, **env: str) -> CompletedProcess[str]:
        name, *args = shlex.split(command)
        script = SCRIPTS / name
        full = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")},
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "GITHUB_REPOSITORY": "acme/fleet",
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_RUN_ID": "42",
            **env,
        }
        runner = "bash" if script.suffix == ".sh" else sys.executable
        return subprocess.run(
            [runner, str(script), *args, *more],
            cwd=tmp_path,
            env=full,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return call


def outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


RUN_URL = "https://github.com/acme/fleet/actions/runs/42"


# -- targets.py, with the real `ztplan validate` -------------------------------------------

REAL_ZTPLAN = f"{sys.executable} -m ztplan"


def spec(target: str) -> str:
    return f"version: 1\ntarget: {{name: {target}}}\nsysctl: {{net.ipv4.ip_forward: 1}}\n"


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "gw1.yaml").write_text(spec("gw1"))
    (folder / "gw2.yaml").write_text(spec("gw2"))
    (folder / "README.md").write_text("not a spec\n")
    return folder


def test_targets_validates_every_spec_and_lists_the_live_ones(
    run: Run, tmp_path: Path, specs: Path
) -> None:
    out = tmp_path / "out"
    done = run("targets.py --live gw2 --github-output", ZTPLAN=REAL_ZTPLAN, GITHUB_OUTPUT=str(out))
    assert done.returncode == 0, done.stderr
    got = outputs(out)
    gw1 = {"target": "gw1", "spec": "specs/gw1.yaml"}
    gw2 = {"target": "gw2", "spec": "specs/gw2.yaml"}
    assert json.loads(got["all"]) == {"include": [gw1, gw2]}
    assert json.loads(got["live"]) == {"include": [gw2]}
    assert got["live-count"] == "1"
    assert "::notice::not planned, applied or checked live" in done.stderr


@pytest.mark.parametrize(("live", "count"), [("", 0), ("*", 2), ("gw1, gw2", 2), ("gw1 gw2", 2)])
def test_targets_live_names(run: Run, tmp_path: Path, specs: Path, live: str, count: int) -> None:
    out = tmp_path / "out"
    done = run(
        "targets.py --github-output --live", live, ZTPLAN=REAL_ZTPLAN, GITHUB_OUTPUT=str(out)
    )
    assert done.returncode == 0, done.stderr
    assert outputs(out)["live-count"] == str(count)


def test_targets_refuses_an_invalid_spec_a_shared_target_and_an_unknown_live_name(
    run: Run, specs: Path
) -> None:
    (specs / "bad.yaml").write_text(spec("gw3") + "foo: 1\n")
    (specs / "gw1b.yaml").write_text(spec("gw1"))
    done = run("targets.py --live gw9", ZTPLAN=REAL_ZTPLAN)
    assert done.returncode == 1
    errors = done.stderr.splitlines()
    assert "::error file=specs/bad.yaml::specs/bad.yaml:4: foo: not a known field" in errors[0]
    assert "::error file=specs/gw1b.yaml::target gw1 is also the target of specs/gw1.yaml" in errors
    assert "ZTPLAN_LIVE_TARGETS names gw9" in errors[-1]
    assert done.stdout == ""


# -- pr-comment.py -----------------------------------------------------------------------

BODY = "<!-- ztplan-plan:gw1 -->\n## Plan on the gateway gw1\n\nNo changes.\n"
COMMENTS = "repos/acme/fleet/issues/12/comments"


def test_pr_comment_posts_a_new_comment(run: Run, tmp_path: Path, gh: Fake) -> None:
    (tmp_path / "comment.md").write_text(BODY)
    gh.answer(["--paginate", "[]", 0], ["--method POST", '{"id": 7}', 0])
    done = run("pr-comment.py --pr 12 comment.md")
    assert done.returncode == 0, done.stderr
    assert gh.calls()[0]["args"] == ["api", "--paginate", f"{COMMENTS}?per_page=100"]
    assert gh.writes() == [("POST", COMMENTS, {"body": BODY})]


def test_pr_comment_updates_the_comment_with_its_marker(run: Run, tmp_path: Path, gh: Fake) -> None:
    (tmp_path / "comment.md").write_text(BODY)
    page1 = [
        {"id": 1, "body": "LGTM"},
        # A reviewer quoting the bot's comment must not have theirs edited.
        {"id": 2, "body": "> <!-- ztplan-plan:gw1 -->\n> No changes.\nreally?"},
        {"id": 3, "body": "<!-- ztplan-plan:gw10 -->\n## another target"},
    ]
    page2 = [{"id": 4, "body": "<!-- ztplan-plan:gw1 -->\n## the old plan"}]
    # gh --paginate prints one JSON array per page, back to back.
    gh.answer(["--paginate", json.dumps(page1) + json.dumps(page2) + "\n", 0])
    done = run("pr-comment.py --pr 12 comment.md")
    assert done.returncode == 0, done.stderr
    assert gh.writes() == [("PATCH", "repos/acme/fleet/issues/comments/4", {"body": BODY})]
    assert "updated comment 4" in done.stdout


def test_pr_comment_cuts_a_body_github_would_refuse(run: Run, tmp_path: Path, gh: Fake) -> None:
    (tmp_path / "comment.md").write_text(BODY + "| x |\n" * 20_000)
    gh.answer(["--paginate", "[]", 0])
    assert run("pr-comment.py --pr 12 comment.md").returncode == 0
    ((_, _, sent),) = gh.writes()
    assert sent["body"].startswith(BODY)
    assert len(sent["body"]) < 65_536
    assert f"truncated: the full text is in the [workflow run]({RUN_URL})" in sent["body"]


def test_pr_comment_refuses_a_body_without_marker_and_goes_on(
    run: Run, tmp_path: Path, gh: Fake
) -> None:
    (tmp_path / "a.md").write_text("## no marker\n")
    (tmp_path / "b.md").write_text(BODY)
    gh.answer(["--paginate", "[]", 0])
    done = run("pr-comment.py --pr 12 a.md b.md")
    assert done.returncode == 1
    assert "a.md: the body does not start with a marker" in done.stderr
    assert gh.writes() == [("POST", COMMENTS, {"body": BODY})]


def test_pr_comment_reports_gh_failing(run: Run, tmp_path: Path, gh: Fake) -> None:
    (tmp_path / "comment.md").write_text(BODY)
    gh.answer(["--paginate", "", 1])
    done = run("pr-comment.py --pr 12 comment.md")
    assert done.returncode == 1
    assert "error: gh api --paginate" in done.stderr
    assert gh.writes() == []


# -- drift-issue.py ----------------------------------------------------------------------


def result(tmp_path: Path, target: str, status: str, report: str = "") -> str:
    """What scripts/drift-check.sh leaves for one target."""
    folder = tmp_path / "results" / f"ztplan-drift-{target}"
    folder.mkdir(parents=True)
    (folder / "target").write_text(target + "\n")
    (folder / "status").write_text(status + "\n")
    (folder / "drift.md").write_text(report)
    return str(folder)


OPEN_DRIFT_ISSUES = "issues?state=open&labels=drift"


def test_drift_opens_an_issue_and_makes_its_label(run: Run, tmp_path: Path, gh: Fake) -> None:
    gh.answer(
        [OPEN_DRIFT_ISSUES, "[]", 0],
        ["repos/acme/fleet/labels/drift", "", 1],  # 404: no label yet
        ["--method POST repos/acme/fleet/issues", '{"number": 5}', 0],
    )
    done = run("drift-issue.py", result(tmp_path, "gw1", "drift", '~ sysctl["k"]\n'))
    assert done.returncode == 0, done.stderr
    assert "gw1: drift: opened issue #5" in done.stdout
    label, issue = gh.writes()
    assert label[:2] == ("POST", "repos/acme/fleet/labels") and label[2]["name"] == "drift"
    assert issue[:2] == ("POST", "repos/acme/fleet/issues")
    assert (issue[2]["title"], issue[2]["labels"]) == ("Drift on gw1", ["drift"])
    assert '~ sysctl["k"]' in issue[2]["body"] and RUN_URL in issue[2]["body"]


def test_drift_updates_the_open_issue(run: Run, tmp_path: Path, gh: Fake) -> None:
    listed = [
        {"number": 3, "title": "Drift on gw1", "pull_request": {}},  # a PR, not an issue
        {"number": 9, "title": "Drift on gw1"},
        {"number": 8, "title": "Drift on gw10"},
    ]
    gh.answer([OPEN_DRIFT_ISSUES, json.dumps(listed), 0])
    done = run("drift-issue.py", result(tmp_path, "gw1", "drift", "the new report\n"))
    assert done.returncode == 0, done.stderr
    ((method, path, sent),) = gh.writes()
    assert (method, path, list(sent)) == ("PATCH", "repos/acme/fleet/issues/9", ["body"])
    assert "the new report" in sent["body"]


def test_drift_closes_the_issue_when_clean(run: Run, tmp_path: Path, gh: Fake) -> None:
    gh.answer([OPEN_DRIFT_ISSUES, json.dumps([{"number": 9, "title": "Drift on gw1"}]), 0])
    done = run("drift-issue.py", result(tmp_path, "gw1", "clean"))
    assert done.returncode == 0, done.stderr
    comment, close = gh.writes()
    assert comment[:2] == ("POST", "repos/acme/fleet/issues/9/comments")
    assert "No drift any more" in comment[2]["body"]
    closed = {"state": "closed", "state_reason": "completed"}
    assert close == ("PATCH", "repos/acme/fleet/issues/9", closed)


def test_drift_leaves_issues_alone_when_clean_without_one_or_on_error(
    run: Run, tmp_path: Path, gh: Fake
) -> None:
    gh.answer([OPEN_DRIFT_ISSUES, json.dumps([{"number": 9, "title": "Drift on gw2"}]), 0])
    done = run("drift-issue.py", result(tmp_path, "gw1", "clean"), result(tmp_path, "gw2", "error"))
    assert done.returncode == 0, done.stderr
    assert gh.writes() == []
    assert "gw2: error: the check failed; issues left as they are" in done.stdout


# -- reviewed-plan-run.py ----------------------------------------------------------------


def test_reviewed_plan_run_finds_the_newest_run_on_the_pr_head(
    run: Run, tmp_path: Path, gh: Fake
) -> None:
    pulls = [
        {"number": 11, "merge_commit_sha": "x", "merged_at": None, "head": {"sha": "h11"}},
        {"number": 12, "merge_commit_sha": "abc", "merged_at": "2026", "head": {"sha": "h12"}},
    ]
    runs = {"workflow_runs": [{"id": 100}, {"id": 130}, {"id": 120}]}
    gh.answer(["commits/abc/pulls", json.dumps(pulls), 0], ["/runs?", json.dumps(runs), 0])
    out = tmp_path / "out"
    done = run("reviewed-plan-run.py --sha abc", GITHUB_OUTPUT=str(out))
    assert done.returncode == 0, done.stderr
    assert outputs(out) == {"pr": "12", "run-id": "130"}
    query = gh.calls()[1]["args"][1]
    assert query.startswith("repos/acme/fleet/actions/workflows/plan.yml/runs?")
    assert "head_sha=h12" in query and "status=completed" in query


def test_reviewed_plan_run_is_empty_without_a_pull_request(
    run: Run, tmp_path: Path, gh: Fake
) -> None:
    gh.answer(["commits/abc/pulls", "[]", 0])
    out = tmp_path / "out"
    done = run("reviewed-plan-run.py --sha abc", GITHUB_OUTPUT=str(out))
    assert done.returncode == 0, done.stderr
    assert outputs(out) == {"pr": "", "run-id": ""}
    assert "came from no pull request" in done.stdout


# -- apply-reviewed.py -------------------------------------------------------------------


def plan(serial: int = 3, changes: int = 1, firewall: str = "f1") -> dict[str, Any]:
    """The parts of a saved plan (ztplan plan -o) that the script compares."""
    return {
        "ztplan_version": "0.1.0",
        "target": "gw1",
        "spec": {"path": "specs/gw1.yaml", "repo": "/pr/checkout", "commit": "test-merge"},
        "changes": [{"address": f'sysctl["k{i}"]', "action": "update"} for i in range(changes)],
        "snapshots": {"firewall": firewall, "sysctl": "s1"},
        "desired": {},
        "state_lineage": "L",
        "state_serial": serial,
        "spec_text": "version: 1\n",
    }


@pytest.fixture
def apply(run: Run, tmp_path: Path, ztplan: Fake) -> Any:
    """Run apply-reviewed.py: ztplan plans `fresh`; the PR reviewed `reviewed`."""

    def call(
        fresh: dict[str, Any], reviewed: dict[str, Any] | None, *more: str, **env: str
    ) -> CompletedProcess[str]:
        ztplan.answer(
            ["plan", "### ztplan plan: gw1\n", 0, {"-o": json.dumps(fresh)}],
            ["apply", "Apply complete.\n", 0],
        )
        if reviewed is not None:
            (tmp_path / "plan.json").write_text(json.dumps(reviewed))
            more = ("--reviewed", "plan.json", *more)
        summary = str(tmp_path / "summary.md")
        command = "apply-reviewed.py --spec specs/gw1.yaml --ref abc --out out"
        return run(command, *more, GITHUB_STEP_SUMMARY=summary, **env)

    return call


def test_apply_uses_the_reviewed_plan_while_it_holds(
    apply: Any, tmp_path: Path, ztplan: Fake
) -> None:
    done = apply(plan(), plan(), ZTPLAN_APPLY_FLAGS="--require-signed")
    assert done.returncode == 0, done.stderr
    planned, applied = (call["args"] for call in ztplan.calls())
    # From the merged commit, so that the state records a commit main contains.
    assert planned[:6] == ["plan", "specs/gw1.yaml", "--repo", ".", "--ref", "abc"]
    assert planned[planned.index("-o") + 1] == "out/fresh.json"
    assert applied == ["apply", "out/fresh.json", "--lock-timeout", "300", "--require-signed"]
    assert "still holds: applying exactly it" in done.stdout
    summary = (tmp_path / "summary.md").read_text()
    assert "still holds" in summary and "### ztplan plan: gw1" in summary


def test_apply_plans_again_when_the_reviewed_plan_is_stale(apply: Any, ztplan: Fake) -> None:
    done = apply(plan(serial=4, firewall="f2"), plan(serial=3))
    assert done.returncode == 0, done.stderr
    assert ztplan.commands() == ["plan", "apply"]
    assert "Applying a fresh plan (below): the state serial (an apply ran since)" in done.stdout
    assert "the live state (firewall)" in done.stdout


def test_apply_without_a_reviewed_plan_plans_again(apply: Any, ztplan: Fake) -> None:
    done = apply(plan(), None)
    assert done.returncode == 0, done.stderr
    assert "no plan was reviewed for this commit" in done.stdout
    assert ztplan.commands() == ["plan", "apply"]


def test_apply_on_stale_fail_applies_nothing_unreviewed(apply: Any, ztplan: Fake) -> None:
    done = apply(plan(serial=4), plan(), "--on-stale", "fail")
    assert done.returncode == 1
    assert ztplan.commands() == ["plan"]
    assert "Nothing applied (ZTPLAN_ON_STALE_PLAN=fail)" in done.stdout


def test_apply_on_stale_fail_lets_an_empty_plan_through(apply: Any, ztplan: Fake) -> None:
    done = apply(plan(serial=4, changes=0), plan(), "--on-stale", "fail")
    assert done.returncode == 0, done.stderr
    assert ztplan.commands() == ["plan", "apply"]


def test_apply_stops_when_the_plan_fails(run: Run, tmp_path: Path, ztplan: Fake) -> None:
    ztplan.answer(["plan", "", 1])
    summary = tmp_path / "summary.md"
    done = run("apply-reviewed.py --spec s.yaml --ref abc", GITHUB_STEP_SUMMARY=str(summary))
    assert done.returncode == 1
    assert ztplan.commands() == ["plan"]
    assert "the plan failed" in summary.read_text()


def test_apply_passes_the_token_only_through_the_environment(apply: Any, ztplan: Fake) -> None:
    done = apply(plan(), plan(), ZEROTIER_CENTRAL_TOKEN="s3cret")
    assert done.returncode == 0, done.stderr
    assert [call["env"]["ZEROTIER_CENTRAL_TOKEN"] for call in ztplan.calls()] == ["s3cret"] * 2
    assert "s3cret" not in done.stdout + done.stderr
    assert all("s3cret" not in " ".join(call["args"]) for call in ztplan.calls())


# -- plan-report.py, sandbox-plan.sh, drift-check.sh -------------------------------------


def test_plan_report_writes_the_comment_and_the_summary(
    run: Run, tmp_path: Path, ztplan: Fake
) -> None:
    ztplan.answer(["plan", "### ztplan plan: gw1\n\nNo changes.\n", 0])
    summary = tmp_path / "summary.md"
    done = run(
        "plan-report.py --marker ztplan-plan:gw1 --title Plan --out out --save-plan "
        "specs/gw1.yaml -- --lock-timeout 300",
        GITHUB_STEP_SUMMARY=str(summary),
    )
    assert done.returncode == 0, done.stderr
    (call,) = ztplan.calls()
    assert shlex.join(call["args"]) == (
        "plan specs/gw1.yaml --format markdown --lock-timeout 300 -o out/plan.json"
    )
    comment = (tmp_path / "out" / "comment.md").read_text()
    assert comment.splitlines()[:2] == ["<!-- ztplan-plan:gw1 -->", "## Plan"]
    assert RUN_URL in comment and "No changes." in comment
    assert summary.read_text().strip() == comment.strip()


def test_plan_report_puts_a_failure_in_the_comment(run: Run, tmp_path: Path, ztplan: Fake) -> None:
    ztplan.answer(["specs/bad.yaml", "", 1], ["plan", "### ztplan plan: gw1\n", 0])
    command = "plan-report.py --marker m --title T --out out specs/gw1.yaml specs/bad.yaml"
    done = run(command)
    assert done.returncode == 1
    assert "::error file=specs/bad.yaml::" in done.stdout
    comment = (tmp_path / "out" / "comment.md").read_text()
    assert "### ztplan plan: gw1" in comment
    assert "**The plan failed:**" in comment and "Error: specs/bad.yaml failed" in comment
    kept = run(command, "--keep-going")
    assert kept.returncode == 0
    assert "::warning file=specs/bad.yaml::" in kept.stdout


def test_sandbox_plan_points_every_plan_at_the_sandbox(
    run: Run, tmp_path: Path, ztplan: Fake
) -> None:
    ztplan.answer(
        ["sandbox up", "", 0],
        ["sandbox env", "export ZTPLAN_CONTROLLER_URL=http://127.0.0.1:1/api/v1\n", 0],
        ["specs/two.yaml", "", 1],  # the emulator lacks its network: a warning only
        ["plan", "### ztplan plan\n", 0],
    )
    done = run("sandbox-plan.sh out specs/one.yaml specs/two.yaml")
    assert done.returncode == 0, done.stderr
    plans = [call for call in ztplan.calls() if call["args"][0] == "plan"]
    assert [call["args"][-2:] for call in plans] == [["--netns", "ztplan-sandbox"]] * 2
    assert {call["env"]["ZTPLAN_CONTROLLER_URL"] for call in plans} == {"http://127.0.0.1:1/api/v1"}
    comment = (tmp_path / "out" / "comment.md").read_text()
    assert comment.startswith("<!-- ztplan-sandbox-plan -->\n")


@pytest.mark.parametrize(("code", "status"), [(0, "clean"), (2, "drift"), (1, "error")])
def test_drift_check_records_the_outcome(
    run: Run, tmp_path: Path, ztplan: Fake, code: int, status: str
) -> None:
    ztplan.answer(["drift", "~ sysctl\n" if code == 2 else "", code])
    done = run("drift-check.sh out gw1 specs/gw1.yaml --ref HEAD")
    assert done.returncode == (1 if status == "error" else 0)  # drift is not a failure
    assert (tmp_path / "out" / "status").read_text() == f"{status}\n"
    assert (tmp_path / "out" / "target").read_text() == "gw1\n"
    (call,) = ztplan.calls()
    assert shlex.join(call["args"]) == "drift specs/gw1.yaml --format markdown --ref HEAD"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(map(str, SCRIPTS.glob("*.sh")))
    done = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


# -- contrib/systemd ---------------------------------------------------------------------


def unit(name: str) -> dict[str, list[str]]:
    """Key -> values of a unit file (comments dropped, repeated keys kept)."""
    keys: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    stub = tmp_path / "ztplan"  # verify wants ExecStart's program to exist
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    for path in UNITS.iterdir():
        text = path.read_text().replace("/usr/local/bin/ztplan", str(stub))
        (tmp_path / path.name).write_text(text)
    instances = ["ztplan-drift@gw1.service", "ztplan-drift@gw1.timer", "ztplan-apply@gw1.service"]
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *instances],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    # An unknown key is only a warning to systemd: any output at all fails here.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_units_are_hardened_without_cutting_ztplan_off_the_network() -> None:
    names = ["ztplan-apply@.service", "ztplan-drift@.service", "ztplan-drift@.timer"]
    assert sorted(path.name for path in UNITS.iterdir()) == names
    for name in ("ztplan-drift@.service", "ztplan-apply@.service"):
        keys = unit(name)
        assert keys["Type"] == ["oneshot"]
        assert keys["EnvironmentFile"] == ["-/etc/ztplan/%i.env"]
        assert keys["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN"]
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
            assert keys[key] == ["yes"], (name, key)
        # ztplan must see and change the host's own network stack, and make namespaces.
        for key in ("PrivateNetwork", "RestrictNamespaces", "ProtectKernelTunables"):
            assert key not in keys, (name, key)
        assert "AF_NETLINK" in keys["RestrictAddressFamilies"][0].split()
    drift = unit("ztplan-drift@.service")
    (start,) = drift["ExecStart"]
    assert start.startswith("/usr/local/bin/ztplan drift ${ZTPLAN_SPEC} --repo ${ZTPLAN_REPO}")
    assert "--fetch" in start
    assert "--metrics-file /var/lib/node_exporter/textfile_collector/ztplan-%i.prom" in start
    assert drift["SuccessExitStatus"] == ["2"]  # drift is a finding, not a broken check
    assert "OnFailure" not in drift and "ExecStartPost" not in drift
    apply = unit("ztplan-apply@.service")
    assert "--auto-approve" in apply["ExecStart"][0]
    # Off until enabled; once enabled, pulled in by each drift check and run after it.
    assert apply["WantedBy"] == ["ztplan-drift@%i.service"]
    assert "ztplan-drift@%i.service" in apply["After"][0].split()
    assert unit("ztplan-drift@.timer")["WantedBy"] == ["timers.target"]
