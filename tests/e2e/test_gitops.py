"""The GitOps loop: specs from git refs, rollback refusal, signatures, drift and metrics."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from tests.conftest import needs_netns, sh
from tests.e2e.test_cli import ZTPLAN
from tests.integration.test_gateway_netns import GATEWAY

pytestmark = needs_netns


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "ZTPLAN_STATE_DIR": str(cwd / "state"), "NO_COLOR": "1", **env}
    return subprocess.run(
        [*ZTPLAN, *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def commit(repo: git.Repo, text: str, message: str) -> str:
    path = Path(repo.working_tree_dir or ".") / "specs" / "gw.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    repo.index.add(["specs/gw.yaml"])
    return repo.index.commit(message).hexsha


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[git.Repo]:
    with git.Repo.init(tmp_path / "repo", initial_branch="main") as made:
        yield made  # closed after: gitpython keeps `git cat-file` helpers running


def test_apply_refuses_a_commit_that_is_not_a_descendant(
    tmp_path: Path, repo: git.Repo, netns: str
) -> None:
    first = commit(repo, GATEWAY, "first")
    second = commit(repo, GATEWAY.replace("198.51.100.7", "198.51.100.8"), "second")
    where = ["--repo", str(repo.working_tree_dir), "--netns", netns, "--auto-approve"]
    assert run(tmp_path, "apply", "specs/gw.yaml", "--ref", second, *where).returncode == 0
    old = run(tmp_path, "apply", "specs/gw.yaml", "--ref", first, *where)
    assert old.returncode == 1
    assert old.stderr.strip() == (
        f"Error: commit {first[:12]} is not a descendant of the last applied commit "
        f"{second[:12]}: applying it would roll the gateway back (pass "
        "--allow-non-descendant if this is on purpose)"
    )
    forced = run(
        tmp_path, "apply", "specs/gw.yaml", "--ref", first, *where, "--allow-non-descendant"
    )
    assert forced.returncode == 0, forced.stderr
    state = (tmp_path / "state" / "gw.json").read_text()
    assert first in state and second not in state


def test_a_remote_repository_is_cloned_once_and_fetched(
    tmp_path: Path, repo: git.Repo, netns: str
) -> None:
    commit(repo, GATEWAY, "first")
    url = f"file://{repo.working_tree_dir}"
    done = run(
        tmp_path,
        "plan",
        "specs/gw.yaml",
        "--repo",
        url,
        "--ref",
        "main",
        "--netns",
        netns,
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "state" / "cache" / "repos").iterdir())
    newer = commit(repo, GATEWAY.replace("198.51.100.7", "198.51.100.9"), "second")
    stale = run(tmp_path, "plan", "specs/gw.yaml", "--repo", url, "--ref", "main", "--netns", netns)
    assert "198.51.100.9" not in stale.stdout  # not fetched yet
    fresh = run(
        tmp_path,
        "plan",
        "specs/gw.yaml",
        "--repo",
        url,
        "--ref",
        "main",
        "--fetch",
        "--netns",
        netns,
        "--json",
    )
    assert fresh.returncode == 0 and newer in fresh.stdout and "198.51.100.9" in fresh.stdout


@pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gnupg")
def test_require_signed_refuses_unsigned_and_accepts_a_trusted_signature(
    tmp_path: Path, repo: git.Repo, netns: str
) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "ztplan test <test@ztplan.invalid>",
            "ed25519",
            "sign",
            "never",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    unsigned = commit(repo, GATEWAY, "unsigned")
    where = [
        "--repo",
        str(repo.working_tree_dir),
        "--netns",
        netns,
        "--auto-approve",
        "--require-signed",
    ]
    refused = run(
        tmp_path, "apply", "specs/gw.yaml", "--ref", unsigned, *where, GNUPGHOME=str(home)
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        f"Error: commit {unsigned[:12]} is not signed by a trusted key"
    )
    Path(repo.working_tree_dir or ".", "specs", "gw.yaml").write_text(GATEWAY + "# signed\n")
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=test@ztplan.invalid",
            "-c",
            "user.signingkey=test@ztplan.invalid",
            "commit",
            "-qS",
            "-am",
            "signed",
        ],
        cwd=repo.working_tree_dir,
        env=env,
        check=True,
    )
    signed = repo.head.commit.hexsha
    accepted = run(tmp_path, "apply", "specs/gw.yaml", "--ref", signed, *where, GNUPGHOME=str(home))
    assert accepted.returncode == 0, accepted.stderr


def test_drift_exit_codes_and_metrics(tmp_path: Path, repo: git.Repo, netns: str) -> None:
    sha = commit(repo, GATEWAY, "first")
    where = [
        "specs/gw.yaml",
        "--repo",
        str(repo.working_tree_dir),
        "--ref",
        "main",
        "--netns",
        netns,
    ]
    metrics = tmp_path / "ztplan.prom"
    assert run(tmp_path, "apply", *where, "--auto-approve").returncode == 0

    clean = run(tmp_path, "drift", *where, "--metrics-file", str(metrics))
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")
    text = metrics.read_text()
    assert 'ztplan_check_success{target="gw"} 1\n' in text
    assert 'ztplan_drift_resources{target="gw",provider="firewall"} 0\n' in text
    assert 'ztplan_drift_resources{target="gw",provider="sysctl"} 0\n' in text
    assert f'ztplan_applied_commit_info{{target="gw",commit="{sha}"}} 1\n' in text
    assert 'ztplan_last_apply_timestamp_seconds{target="gw"} ' in text

    sh(netns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    drifted = run(tmp_path, "drift", *where, "--metrics-file", str(metrics))
    assert drifted.returncode == 2
    assert drifted.stdout == 'drift: gw: ~ sysctl["net.ipv4.ip_forward"]: "0" -> "1"\n'
    assert 'ztplan_drift_resources{target="gw",provider="sysctl"} 1\n' in metrics.read_text()
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"  # nothing changed

    as_prometheus = run(tmp_path, "drift", *where, "--format", "prometheus")
    assert as_prometheus.returncode == 2
    assert 'ztplan_drift_resources{target="gw",provider="sysctl"} 1' in as_prometheus.stdout

    failing = run(
        tmp_path, "drift", *where[:-1], "no-such-namespace-zt", "--metrics-file", str(metrics)
    )
    assert failing.returncode == 1
    assert failing.stderr.startswith("Error: host: no network namespace named")
    assert 'ztplan_check_success{target="gw"} 0\n' in metrics.read_text()
    assert "ztplan_drift_resources" not in metrics.read_text()
