"""ztplan.source: the spec from the work tree or from a git commit, in real repositories
built in tmp_path (copier's way), with the commit asserted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import git
import pytest

from ztplan.errors import SourceError, SpecError
from ztplan.source import read_spec

SPEC = "specs/gw.yaml"
AUTHOR = git.Actor("Test Author", "author@example.invalid")


def spec_text(rule: str) -> str:
    return (
        "version: 1\ntarget: {name: gw1}\nfirewall:\n  ipv4:\n    filter:\n"
        f"      FORWARD: [{rule!r}]\n"
    )


def forward_rules(spec: object) -> list[str]:
    firewall = getattr(spec, "firewall", None)
    assert firewall is not None and firewall.ipv4 is not None
    return list(firewall.ipv4.tables()["filter"].chains["FORWARD"].rules)


@dataclass
class History:
    root: Path
    repo: git.Repo
    first: str
    second: str


def commit_file(repo: git.Repo, root: Path, rel: str, text: str, message: str) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    repo.index.add([rel])
    return repo.index.commit(message, author=AUTHOR, committer=AUTHOR).hexsha


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    """A repository on branch main with two commits of specs/gw.yaml (ACCEPT, then DROP)."""
    root = tmp_path / "gateway-config"
    root.mkdir()
    repo = git.Repo.init(root, initial_branch="main")
    first = commit_file(repo, root, SPEC, spec_text("-i zt+ -j ACCEPT"), "first")
    second = commit_file(repo, root, SPEC, spec_text("-i zt+ -j DROP"), "second")
    yield History(root, repo, first, second)
    repo.close()


# --- a file at a commit -----------------------------------------------------------------


def test_reads_the_spec_of_an_older_commit_by_sha(history: History) -> None:
    spec, source = read_spec(SPEC, repo=str(history.root), ref=history.first)
    assert forward_rules(spec) == ["-i zt+ -j ACCEPT"]
    assert source.commit == history.first
    assert source.path == SPEC
    assert source.repo == str(history.root)
    assert source.ref == history.first


def test_reads_the_spec_of_a_branch(history: History) -> None:
    spec, source = read_spec(SPEC, repo=str(history.root), ref="main")
    assert forward_rules(spec) == ["-i zt+ -j DROP"]
    assert source.commit == history.second
    assert source.ref == "main"


def test_reads_the_spec_of_a_relative_ref(history: History) -> None:
    spec, source = read_spec(SPEC, repo=str(history.root), ref="main~1")
    assert forward_rules(spec) == ["-i zt+ -j ACCEPT"]
    assert source.commit == history.first


def test_repo_without_ref_means_head(history: History) -> None:
    spec, source = read_spec(SPEC, repo=str(history.root))
    assert forward_rules(spec) == ["-i zt+ -j DROP"]
    assert source.commit == history.second
    assert source.ref == "HEAD"


def test_reading_at_a_ref_ignores_and_keeps_the_work_tree(history: History) -> None:
    work = history.root / SPEC
    work.write_text(spec_text("-i zt+ -j REJECT"))  # uncommitted edit
    spec, source = read_spec(SPEC, repo=str(history.root), ref=history.first)
    assert forward_rules(spec) == ["-i zt+ -j ACCEPT"]
    assert work.read_text() == spec_text("-i zt+ -j REJECT")
    assert history.repo.head.commit.hexsha == history.second
    assert history.repo.active_branch.name == "main"
    assert [item.a_path for item in history.repo.index.diff(None)] == [SPEC]


def test_an_invalid_spec_at_a_commit_names_the_file_and_the_commit(history: History) -> None:
    sha = commit_file(history.repo, history.root, SPEC, spec_text("-A FORWARD -j ACCEPT"), "broken")
    with pytest.raises(SpecError) as caught:
        read_spec(SPEC, repo=str(history.root), ref=sha)
    assert str(caught.value) == (
        f"{SPEC}@{sha[:12]}:6: firewall.ipv4.filter.FORWARD[0]: rule arguments without the "
        "command -A (write only what follows `-A CHAIN`; the chain is the key above)"
    )


# --- errors -----------------------------------------------------------------------------


def test_a_bad_ref_is_refused(history: History) -> None:
    with pytest.raises(SourceError) as caught:
        read_spec(SPEC, repo=str(history.root), ref="no-such-branch")
    assert str(caught.value) == (
        f"{history.root}: no commit named 'no-such-branch' "
        "(check the branch, tag or sha (and fetch it))"
    )


def test_a_file_missing_at_the_ref_is_refused(history: History) -> None:
    with pytest.raises(SourceError) as caught:
        read_spec("specs/other.yaml", repo=str(history.root), ref="main")
    assert str(caught.value) == (f"specs/other.yaml: no such file at main ({history.second[:12]})")


@pytest.mark.parametrize("path", ["../outside.yaml", "specs/../../outside.yaml", "/etc/passwd"])
def test_a_path_outside_the_repository_is_refused(history: History, path: str) -> None:
    with pytest.raises(SourceError) as caught:
        read_spec(path, repo=str(history.root), ref="main")
    assert str(caught.value) == f"{path}: a path inside the repository is needed with --ref"


def test_an_absolute_path_inside_the_repository_is_read(history: History) -> None:
    spec, source = read_spec(str(history.root / SPEC), repo=str(history.root), ref="main")
    assert forward_rules(spec) == ["-i zt+ -j DROP"]
    assert source.path == SPEC


def test_a_directory_that_is_not_a_repository_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(SourceError) as caught:
        read_spec(SPEC, repo=str(plain), ref="main")
    assert str(caught.value) == f"{plain}: not a git repository (pass --repo DIR of a clone)"


def test_a_missing_repository_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SourceError) as caught:
        read_spec(SPEC, repo=str(missing), ref="main")
    assert str(caught.value) == f"{missing}: not a git repository (pass --repo DIR of a clone)"


# --- the work tree ------------------------------------------------------------------------


def test_a_committed_spec_in_a_repository_is_clean(history: History) -> None:
    spec, source = read_spec(str(history.root / SPEC))
    assert forward_rules(spec) == ["-i zt+ -j DROP"]
    assert source.dirty is False
    assert source.commit == history.second
    assert source.path == SPEC
    assert source.repo == str(history.root)
    assert source.ref is None


def test_an_edited_spec_in_a_repository_is_dirty(history: History) -> None:
    (history.root / SPEC).write_text(spec_text("-i zt+ -j REJECT"))
    spec, source = read_spec(str(history.root / SPEC))
    assert forward_rules(spec) == ["-i zt+ -j REJECT"]
    assert source.dirty is True
    assert source.commit == history.second


def test_an_untracked_spec_in_a_repository_is_dirty(history: History) -> None:
    extra = history.root / "specs" / "new.yaml"
    extra.write_text(spec_text("-j ACCEPT"))
    _, source = read_spec(str(extra))
    assert source.dirty is True
    assert source.path == "specs/new.yaml"


def test_a_spec_outside_any_repository_has_no_provenance(tmp_path: Path) -> None:
    path = tmp_path / "alone.yaml"
    path.write_text(spec_text("-j ACCEPT"))
    spec, source = read_spec(str(path))
    assert forward_rules(spec) == ["-j ACCEPT"]
    assert (source.path, source.repo, source.commit, source.dirty) == (str(path), None, None, None)


def test_a_missing_work_tree_spec_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as caught:
        read_spec(str(path))
    assert str(caught.value) == f"{path}: no such spec file"
