"""Where the spec text comes from: a file in the working tree, or a file at a git commit.

Reading from a commit goes through the object database (gitpython), never through a
checkout, so `plan --repo . --ref origin/main` neither needs nor touches a clean work tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from ztplan.errors import SourceError, SpecError
from ztplan.model import SpecSource
from ztplan.spec import Spec, parse_spec

__all__ = ["DEFAULT_SPEC", "read_spec"]

DEFAULT_SPEC = "specs/gateway.yaml"


def read_spec(
    path: str | None, repo: str | None = None, ref: str | None = None
) -> tuple[Spec, SpecSource]:
    """Load the spec and say where it came from (commit, dirty work tree)."""
    path = path or DEFAULT_SPEC
    if ref is not None or repo is not None:
        return _from_git(path, repo or ".", ref or "HEAD")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, "", "no such spec file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(path, "", f"cannot read the spec ({error})") from None
    spec = parse_spec(text, path)
    return spec, _work_tree_source(path)


def _work_tree_source(path: str) -> SpecSource:
    """A file's own provenance: the commit of the repository around it, and whether it is dirty."""
    if not any((parent / ".git").exists() for parent in Path(path).resolve().parents):
        return SpecSource(path=path)  # not in a repository: no need to load gitpython
    import git  # lazy: gitpython costs ~0.03-0.1 s to import

    try:
        repo = git.Repo(Path(path).resolve().parent, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return SpecSource(path=path)
    try:
        commit = repo.head.commit.hexsha
    except ValueError:  # a repository without commits
        commit = None
    root = repo.working_tree_dir or "."
    rel = os.path.relpath(Path(path).resolve(), Path(root).resolve())
    dirty = repo.is_dirty(untracked_files=True, path=rel) or repo.is_dirty()
    return SpecSource(path=rel, repo=str(root), commit=commit, dirty=dirty)


def _from_git(path: str, repo_dir: str, ref: str) -> tuple[Spec, SpecSource]:
    import git

    try:
        repo = git.Repo(repo_dir, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise SourceError(
            f"{repo_dir}: not a git repository", "pass --repo DIR of a clone"
        ) from None
    try:
        commit = repo.commit(ref)
    except (git.BadName, ValueError, git.GitCommandError):
        raise SourceError(
            f"{repo_dir}: no commit named {ref!r}", "check the branch, tag or sha (and fetch it)"
        ) from None
    rel = os.path.normpath(path)
    root = repo.working_tree_dir
    if os.path.isabs(rel) and root is not None:
        rel = os.path.relpath(os.path.realpath(rel), os.path.realpath(root))
    if rel.startswith(("..", "/")):
        raise SourceError(f"{path}: a path inside the repository is needed with --ref")
    try:
        blob = commit.tree / rel
        text = blob.data_stream.read().decode("utf-8")
    except KeyError:
        raise SourceError(f"{rel}: no such file at {ref} ({commit.hexsha[:12]})") from None
    except UnicodeDecodeError:
        raise SpecError(f"{rel}@{commit.hexsha[:12]}", "", "not UTF-8 text") from None
    spec = parse_spec(text, f"{rel}@{commit.hexsha[:12]}")
    source = SpecSource(
        path=rel, repo=str(repo.working_tree_dir or repo_dir), commit=commit.hexsha, ref=ref
    )
    return spec, source
