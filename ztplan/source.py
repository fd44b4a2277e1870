"""Where the spec text comes from: a file in the working tree, or a file at a git commit.

Reading from a commit goes through the object database (gitpython), never through a
checkout, so `plan --repo . --ref origin/main` neither needs nor touches a clean work tree.
A remote `--repo URL` is cloned once (bare) into the state dir's cache and fetched on
`--fetch`: a gateway's drift timer then needs no work tree of its own.

Before an apply, `check_commit` refuses a commit that is not a descendant of the last
applied one (an old branch applied by mistake rolls the gateway back) and, when asked,
one without a good signature (git's own `verify-commit`, against the keys the operator's
GnuPG trusts).

`--repo` and `--ref` are user text that reaches git: a URL is one of git's URL forms (no
remote helpers such as `ext::`, nothing that starts with `-`), a ref is revision syntax,
and options are kept apart from arguments by `--` (a `--repo` spelled like an option made
`git fetch` run a command of its choice). A URL's userinfo is never printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ztplan.errors import SourceError, SpecError
from ztplan.model import SpecSource
from ztplan.secret import redact_url
from ztplan.spec import Spec, check_spec_size, parse_spec, read_spec_text

__all__ = [
    "DEFAULT_SPEC",
    "check_commit",
    "check_ref",
    "check_url",
    "read_spec",
    "resolve_repo",
]

DEFAULT_SPEC = "specs/gateway.yaml"


def _is_url(repo: str) -> bool:
    return "://" in repo or (":" in repo and "@" in repo.split(":", 1)[0])


_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCP = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9][A-Za-z0-9.-]*:[^\s]*")
"""`user@host:path`, git's scp-like form; the host never starts with `-`."""
_REF = re.compile(r"[A-Za-z0-9._/@{}^~+-]{1,256}")


def check_url(repo: str) -> None:
    """Refuse a `--repo` URL git would read as an option or as a command to run."""
    shown = redact_url(repo)
    problem = None
    if repo.startswith("-") or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in repo):
        problem = "a URL without spaces or control characters, not an option"
    elif "://" in repo:
        scheme, _, rest = repo.partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if scheme.lower() not in _SCHEMES:
            problem = f"a URL of {', '.join(_SCHEMES)}, not {scheme!r}"
        elif host.startswith("-"):
            problem = "a URL whose host does not start with '-'"
    elif not _SCP.fullmatch(repo):
        problem = "a URL (https://host/path, ssh://host/path or user@host:path)"
    if "::" in repo.split("://", 1)[0]:  # git's remote-helper syntax, `ext::sh -c ...`
        problem = "a URL, not a git remote helper (`transport::address`)"
    if problem:
        raise SourceError(f"--repo {shown}: {problem}")


def check_ref(ref: str) -> None:
    """Refuse a `--ref` that is not revision syntax (a branch, tag, sha, `HEAD~2`)."""
    if ref.startswith("-") or not _REF.fullmatch(ref) or ".." in ref:
        raise SourceError(
            f"--ref {ref[:80]!r}: a branch, tag or commit (letters, digits and . _ / - + ~ ^ @ "
            "{ }), not an option, a range or a path"
        )


def resolve_repo(repo: str, cache_dir: Path | None, fetch: bool = False) -> str:
    """A local repository path for `repo`: itself, or the cached bare clone of a URL."""
    if not _is_url(repo):
        return repo
    import hashlib

    import git

    check_url(repo)
    shown = redact_url(repo)
    if cache_dir is None:
        raise SourceError(f"{shown}: a remote repository needs a state dir to cache it in")
    clone = cache_dir / "repos" / hashlib.sha256(repo.encode()).hexdigest()[:16]
    try:
        if not clone.exists():
            clone.parent.mkdir(parents=True, exist_ok=True)
            git.Repo.clone_from(repo, clone, bare=True).close()
        elif fetch:
            with git.Repo(clone) as cached:
                cached.git.fetch(
                    "--prune",
                    "--",  # everything after is a repository or a refspec, never an option
                    repo,
                    "+refs/heads/*:refs/heads/*",
                    "+refs/tags/*:refs/tags/*",
                )
    except git.GitCommandError as error:
        first = (error.stderr or str(error)).strip().splitlines()[-1:] or ["failed"]
        said = redact_url(first[0].removeprefix("stderr: ").strip().replace(repo, shown))
        raise SourceError(
            f"{shown}: cannot {'fetch' if clone.exists() else 'clone'}: {said}"
        ) from None
    except OSError as error:
        raise SourceError(
            f"{shown}: cannot cache it in {clone.parent} ({error.strerror})"
        ) from None
    return str(clone)


def read_spec(
    path: str | None,
    repo: str | None = None,
    ref: str | None = None,
    cache_dir: Path | None = None,
    fetch: bool = False,
) -> tuple[Spec, SpecSource]:
    """Load the spec and say where it came from (commit, dirty work tree)."""
    path = path or DEFAULT_SPEC
    if ref is not None or repo is not None:
        if ref is not None:
            check_ref(ref)
        local = resolve_repo(repo or ".", cache_dir, fetch)
        spec, source = _from_git(path, local, ref or "HEAD")
        if repo and local != repo:  # name the URL, not the cache (and never its token)
            source = source.model_copy(update={"repo": redact_url(repo)})
        return spec, source
    spec = parse_spec(read_spec_text(path), path)
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
    with repo:  # closes git's helper processes (cat-file) when done
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
    with repo:  # closes git's helper processes (cat-file) when done
        try:
            commit = repo.commit(ref)
        except (git.BadName, ValueError, git.GitCommandError):
            raise SourceError(
                f"{repo_dir}: no commit named {ref!r}",
                "check the branch, tag or sha (and fetch it)",
            ) from None
        rel = os.path.normpath(path)
        root = repo.working_tree_dir
        if os.path.isabs(rel) and root is not None:
            rel = os.path.relpath(os.path.realpath(rel), os.path.realpath(root))
        if rel.startswith(("..", "/")):
            raise SourceError(f"{path}: a path inside the repository is needed with --ref")
        where = f"{rel}@{commit.hexsha[:12]}"
        try:
            blob = commit.tree / rel
        except KeyError:
            raise SourceError(f"{rel}: no such file at {ref} ({commit.hexsha[:12]})") from None
        if getattr(blob, "type", None) != "blob":  # a directory or a submodule
            raise SpecError(where, "", "not a file at that commit")
        check_spec_size(where, blob.size)  # before reading it: a blob can be any size
        try:
            text = blob.data_stream.read().decode("utf-8")
        except UnicodeDecodeError:
            raise SpecError(where, "", "not UTF-8 text") from None
        spec = parse_spec(text, where)
        source = SpecSource(
            path=rel, repo=str(repo.working_tree_dir or repo_dir), commit=commit.hexsha, ref=ref
        )
        return spec, source


def check_commit(
    source: SpecSource,
    repo_dir: str | None,
    last_applied: str | None,
    allow_non_descendant: bool = False,
    require_signed: bool = False,
) -> None:
    """Refuse to apply `source.commit` when it would roll back, or is not signed well."""
    if source.commit is None or repo_dir is None:
        if require_signed:
            raise SourceError(
                f"{source.path}: --require-signed needs the spec from a commit",
                "pass --repo and --ref",
            )
        return
    import git

    with git.Repo(repo_dir, search_parent_directories=True) as repo:
        _check_commit(repo, source, last_applied, allow_non_descendant, require_signed)


def _check_commit(
    repo: Any,
    source: SpecSource,
    last_applied: str | None,
    allow_non_descendant: bool,
    require_signed: bool,
) -> None:
    import git

    assert source.commit is not None
    if last_applied and last_applied != source.commit and not allow_non_descendant:
        try:
            descends = repo.is_ancestor(repo.commit(last_applied), repo.commit(source.commit))
        except (git.BadName, ValueError, git.GitCommandError):
            raise SourceError(
                f"cannot tell whether {source.commit[:12]} descends from the last applied "
                f"commit {last_applied[:12]}: that commit is unknown here",
                "fetch it, or pass --allow-non-descendant if this is on purpose",
            ) from None
        if not descends:
            raise SourceError(
                f"commit {source.commit[:12]} is not a descendant of the last applied commit "
                f"{last_applied[:12]}: applying it would roll the gateway back",
                "pass --allow-non-descendant if this is on purpose",
            )
    if require_signed:
        try:
            repo.git.verify_commit(source.commit)
        except git.GitCommandError as error:
            said = (error.stderr or "").strip().splitlines()
            why = said[-1].removeprefix("stderr: ").strip() if said else "no signature"
            raise SourceError(
                f"commit {source.commit[:12]} is not signed by a trusted key ({why})",
                "sign it (git commit -S), or import the signer's key into this GnuPG keyring",
            ) from None
