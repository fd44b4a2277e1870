"""Attacks on where the spec comes from (issue 12): `--repo`/`--ref` text that reaches git
as options, files that are not files (/dev/zero, a FIFO), sizes that exhaust memory, and
blobs at a commit of any size. Real git repositories built in tmp_path."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import git
import pytest

from tests.adversarial.cli import one_error_line, ztplan
from ztplan.errors import SourceError, SpecError
from ztplan.secret import redact_url
from ztplan.source import read_spec
from ztplan.spec import MAX_SPEC_BYTES, load_spec

SPEC = "gw.yaml"
TEXT = "version: 1\ntarget: {name: gw1}\n"
AUTHOR = git.Actor("Test Author", "author@example.invalid")


def make_repo(root: Path, files: dict[str, str | bytes]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    repo = git.Repo.init(root, initial_branch="main")
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        repo.index.add([rel])
    sha = repo.index.commit("spec", author=AUTHOR, committer=AUTHOR).hexsha
    repo.close()
    return sha


# --- --repo and --ref -------------------------------------------------------------------------


def _option_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A `--repo` that git clones as a local path (a slash comes before the first colon) and
    ztplan took for a URL (`user@host:path`), so it cloned it, then passed it to `git fetch`
    where it was an option: `--upload-pack=` ran a command of the attacker's."""
    pwned = tmp_path / "pwned"
    repo = f"--upload-pack=touch {pwned};@x:y"
    monkeypatch.chdir(tmp_path)
    make_repo(tmp_path / repo, {SPEC: TEXT})
    return repo, pwned


def test_a_repo_spelled_like_an_option_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, pwned = _option_repo(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    for fetch in (False, True):  # clone, then fetch (where git read it as an option)
        with pytest.raises(SourceError) as caught:
            read_spec(SPEC, repo=repo, ref="main", cache_dir=cache, fetch=fetch)
        assert "a URL without spaces or control characters, not an option" in str(caught.value)
    assert not pwned.exists()


def test_git_fetch_gets_the_repo_after_double_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even past the URL check, options and arguments stay apart."""
    import ztplan.source

    repo, pwned = _option_repo(tmp_path, monkeypatch)
    monkeypatch.setattr(ztplan.source, "check_url", lambda repo: None)
    cache = tmp_path / "cache"
    read_spec(SPEC, repo=repo, ref="main", cache_dir=cache)  # the clone works: a local path
    try:
        read_spec(SPEC, repo=repo, ref="main", cache_dir=cache, fetch=True)
    except SourceError:
        pass  # git looks for a repository of that name, and finds none from the cache
    assert not pwned.exists()


@pytest.mark.parametrize(
    "repo",
    [
        "ext::sh -c touch% /tmp/pwned",
        "ext::foo",
        "ssh://-oProxyCommand=touch%20x/path",
        "gopher://host/repo",
        "https://host/repo\nx",
    ],
)
def test_urls_git_would_run_or_misread_are_refused(repo: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"^--repo "):  # by ztplan, before git sees it
        read_spec(SPEC, repo=repo if "://" in repo else f"u@{repo}", ref="main", cache_dir=tmp_path)


@pytest.mark.parametrize("ref", ["--output=/tmp/x", "-h", "main..evil", "a b", "HEAD:gw.yaml"])
def test_refs_that_are_not_revisions_are_refused(ref: str, tmp_path: Path) -> None:
    make_repo(tmp_path / "r", {SPEC: TEXT})
    with pytest.raises(SourceError) as caught:
        read_spec(SPEC, repo=str(tmp_path / "r"), ref=ref)
    assert "a branch, tag or commit" in str(caught.value)


@pytest.mark.parametrize("ref", ["main", "HEAD~0", "main^{commit}", "HEAD", "@"])
def test_revision_syntax_is_still_accepted(ref: str, tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "r", {SPEC: TEXT})
    assert read_spec(SPEC, repo=str(tmp_path / "r"), ref=ref)[1].commit == sha


def test_a_token_in_a_repo_url_is_never_printed(tmp_path: Path) -> None:
    url = "https://deploy:ghp_SECRET123@127.0.0.1:9/nothing.git"
    with pytest.raises(SourceError) as caught:
        read_spec(SPEC, repo=url, ref="main", cache_dir=tmp_path)
    assert "SECRET" not in str(caught.value)
    assert "https://***@127.0.0.1:9/nothing.git" in str(caught.value)
    assert redact_url(url) == "https://***@127.0.0.1:9/nothing.git"


# --- files that are not files, and sizes ------------------------------------------------------


def test_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    """`apply /dev/zero` read until memory ran out."""
    with pytest.raises(SpecError) as caught:
        load_spec("/dev/zero")
    assert str(caught.value) == (
        "/dev/zero: a device, not a spec file (a spec is a regular YAML file)"
    )
    line = one_error_line(ztplan("apply", "/dev/zero", "--auto-approve", cwd=tmp_path, timeout=30))
    assert line == "Error: /dev/zero: a device, not a spec file (a spec is a regular YAML file)"


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def load() -> None:
        try:
            read_spec(str(fifo))
            result.append(None)
        except BaseException as error:  # reported to the test thread
            result.append(error)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock the reader the previous release left hanging
        with open(fifo, "w"):
            pass
        pytest.fail("reading a FIFO as the spec hung")
    assert isinstance(result[0], SpecError)
    assert "a FIFO, not a spec file" in str(result[0])


def test_a_symlink_to_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "spec.yaml"
    link.symlink_to("/dev/urandom")
    with pytest.raises(SpecError, match="a device, not a spec file"):
        read_spec(str(link))


def test_a_spec_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A 60 MB spec took 104 s and 613 MB."""
    big = tmp_path / "big.yaml"
    with open(big, "wb") as handle:
        handle.truncate(60 * 1024 * 1024)  # sparse: no disk used, and never read
    with pytest.raises(SpecError) as caught:
        read_spec(str(big))
    assert str(caught.value) == (
        f"{big}: 62,914,560 bytes, more than the 16 MiB a spec may have (2 x 50,000 rules "
        "take 4-10 MiB)"
    )


def test_a_spec_of_2_x_50000_rules_is_within_the_limit(tmp_path: Path) -> None:
    """The limit is generous: 2 x 50,000 rules of ~70 characters, as the bench writes them
    with longer rules, load."""
    lines = ["version: 1", "target: {name: bench}", "firewall:"]
    for family, fmt in (("ipv4", "-s 10.{}.{}.{}/32"), ("ipv6", "-s 2001:db8::{:x}:{:x}:{:x}/128")):
        lines += [f"  {family}:", "    filter:", "      FORWARD:"]
        lines += [
            f'        - "{fmt.format(i >> 16, (i >> 8) & 255, i & 255)} -p tcp --dport 443 '
            f'-m comment --comment rule{i} -j ACCEPT"'
            for i in range(50_000)
        ]
    text = "\n".join(lines) + "\n"
    assert 7 * 1024 * 1024 < len(text) < MAX_SPEC_BYTES
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    spec = load_spec(str(path))
    assert spec.firewall is not None and spec.firewall.ipv6 is not None
    assert len(spec.firewall.ipv6.tables()["filter"].chains["FORWARD"].rules) == 50_000


def test_a_blob_over_the_limit_at_a_commit_is_refused_unread(tmp_path: Path) -> None:
    root = tmp_path / "r"
    sha = make_repo(root, {SPEC: b"# " + b"x" * (MAX_SPEC_BYTES + 1) + b"\n"})
    with pytest.raises(SpecError) as caught:
        read_spec(SPEC, repo=str(root), ref="main")
    assert str(caught.value).startswith(f"{SPEC}@{sha[:12]}: 16,777,220 bytes, more than")


def test_a_directory_at_a_commit_is_not_a_spec(tmp_path: Path) -> None:
    root = tmp_path / "r"
    make_repo(root, {"specs/gw.yaml": TEXT})
    with pytest.raises(SpecError, match="not a file at that commit"):
        read_spec("specs", repo=str(root), ref="main")


def test_the_cli_refuses_a_fifo_in_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    try:
        line = one_error_line(ztplan("validate", str(fifo), cwd=tmp_path, timeout=30))
    except subprocess.TimeoutExpired:
        pytest.fail("validate of a FIFO hung")
    assert line == f"Error: {fifo}: a FIFO, not a spec file (a spec is a regular YAML file)"


def test_a_fifo_or_a_device_as_a_saved_plan_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    line = one_error_line(ztplan("apply", str(fifo), cwd=tmp_path, timeout=30))
    assert line == f"Error: {fifo}: a FIFO, not a plan file"
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    line = one_error_line(ztplan("apply", str(zero), cwd=tmp_path, timeout=30))
    assert line == f"Error: {zero}: a device, not a plan file"
    shown = one_error_line(ztplan("show", str(fifo), cwd=tmp_path, timeout=30))
    assert shown == f"Error: {fifo}: a FIFO, not a plan file"
