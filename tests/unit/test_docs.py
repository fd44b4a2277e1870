"""The docs stay honest: the commands, options, specs, make targets and links they show
exist.

What counts as a command line in a Markdown file:

- every line of a ```sh, ```bash or ```shell block (comments after ` #` dropped);
- the lines of a ```console block that start with `$ ` (the rest is output, not checked);
- every inline code span outside the blocks, e.g. `ztplan plan SPEC --detailed-exitcode`.

In such a line, `ztplan` (or `.../ztplan`) at the start of a command (after `sudo`,
`VAR=value`, `$(`, `|`, `&&`, `;`) must be followed by a real command (a placeholder
such as `COMMAND` is allowed), and each option after it must be in that command's
`--help`. ```text blocks are output and are not checked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import ROOT
from ztplan.cli import app
from ztplan.spec import parse_spec

README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"
COMMAND_DOCS = [README, GUIDE, ROOT / "docs" / "gitops.md"]
LINKED_DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

SHELL_LANGS = {"sh", "bash", "shell"}
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w-]*)")
SEGMENT = re.compile(r"\$\(|&&|\|\||[|;()`]")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")
OPTION_LINE = re.compile(r"^  (?:(-\w), )?(--[a-z][\w-]*)")
COMMAND_LINE = re.compile(r"^  ([a-z][\w-]*)\s")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


# --- the CLI as its --help describes it ---------------------------------------------


@dataclass(frozen=True)
class Help:
    options: frozenset[str]
    commands: frozenset[str]


@functools.cache
def cli_help(*path: str) -> Help:
    """The options and subcommands listed by `ztplan PATH... --help`."""
    done = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert done.exit_code == 0, f"ztplan {' '.join(path)} --help failed:\n{done.output}"
    options: set[str] = set()
    commands: set[str] = set()
    section = ""
    for line in done.output.splitlines():
        if line and not line.startswith(" "):
            section = line.rstrip(":").strip()
        elif section == "Options" and (found := OPTION_LINE.match(line)):
            options.update(o for o in found.groups() if o)
        elif section == "Commands" and (found := COMMAND_LINE.match(line)):
            commands.add(found[1])
    return Help(frozenset(options), frozenset(commands))


def test_help_is_parsed() -> None:
    """Guards the parser above: if typer's help format changes, the checks below would
    otherwise pass without checking anything."""
    assert {"validate", "plan", "apply", "drift", "import", "sandbox"} <= cli_help().commands
    assert {"up", "env", "status", "down"} <= cli_help("sandbox").commands
    assert {"--netns", "--detailed-exitcode", "-o", "--out", "--target"} <= cli_help("plan").options
    assert "--debug" in cli_help().options


# --- where the docs show command lines --------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    line: int
    """Line number of the block's first content line."""
    lines: tuple[str, ...]


def split_markdown(text: str) -> tuple[list[Block], str]:
    """The fenced blocks, and the prose with every block blanked out (line numbers kept)."""
    blocks: list[Block] = []
    prose: list[str] = []
    fence: tuple[str, str, int, list[str]] | None = None  # (marker, lang, first line, lines)
    for number, line in enumerate(text.splitlines(), 1):
        found = FENCE.match(line)
        if fence is None:
            if found:
                fence = (found[2], found[3].lower(), number + 1, [])
                prose.append("")
            else:
                prose.append(line)
            continue
        prose.append("")
        if found and found[2].startswith(fence[0]) and not found[3]:
            blocks.append(Block(fence[1], fence[2], tuple(fence[3])))
            fence = None
        else:
            fence[3].append(line)
    assert fence is None, f"a code block opened at line {fence[2] - 1} is never closed"
    return blocks, "\n".join(prose)


def command_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every command line the file shows (see the module doc)."""
    blocks, prose = split_markdown(path.read_text())
    for block in blocks:
        if block.lang in SHELL_LANGS:
            joined, start = "", block.line
            for offset, line in enumerate(block.lines):
                if not joined:
                    start = block.line + offset
                line = re.sub(r"(^|\s)#.*$", "", line)
                if line.rstrip().endswith("\\"):
                    joined += line.rstrip()[:-1] + " "
                    continue
                yield start, joined + line
                joined = ""
        elif block.lang == "console":
            for offset, line in enumerate(block.lines):
                if line.startswith("$ "):
                    yield block.line + offset, re.sub(r"(^|\s)#.*$", "", line[2:])
    for span in re.finditer(r"`([^`]+)`", prose):
        yield prose.count("\n", 0, span.start()) + 1, " ".join(span[1].split())


def ztplan_invocations(line: str) -> Iterator[list[str]]:
    """The words after `ztplan` for each ztplan command in a shell line."""
    for segment in SEGMENT.split(line):
        words = segment.replace('"', " ").replace("'", " ").split()
        for i, word in enumerate(words):
            if word == "ztplan" or word.endswith("/ztplan"):
                yield words[i + 1 :]
                break
            if word not in ("sudo", "$", "exec", "time") and not ASSIGNMENT.fullmatch(word):
                break


def _options(words: list[str]) -> list[str]:
    out = []
    for word in words:
        if word == "--":
            break
        if re.fullmatch(r"--[a-z][\w-]*(=.*)?|-[a-zA-Z]", word):
            out.append(word.split("=", 1)[0])
    return out


def _placeholder(word: str) -> bool:
    return word.isupper() or word[0] in "<[{"


def problems_in(words: list[str]) -> list[str]:
    """What is wrong with one `ztplan WORDS...` invocation (empty: nothing)."""
    problems = []
    first = next((i for i, w in enumerate(words) if not w.startswith("-")), len(words))
    problems += [
        f"no global option {o}" for o in _options(words[:first]) if o not in cli_help().options
    ]
    if first == len(words) or _placeholder(words[first]):
        return problems
    command, rest = words[first], words[first + 1 :]
    if command not in cli_help().commands:
        return [*problems, f"no command {command!r}"]
    path = [command]
    sub = cli_help(command).commands
    if sub:
        nxt = next((i for i, w in enumerate(rest) if not w.startswith("-")), None)
        if nxt is not None and not _placeholder(rest[nxt]):
            if rest[nxt] not in sub:
                return [*problems, f"no command {command} {rest[nxt]!r}"]
            path.append(rest[nxt])
            rest = rest[nxt + 1 :]
    known = cli_help(*path).options
    name = " ".join(path)
    return problems + [
        f"`ztplan {name}` has no option {o}" for o in _options(rest) if o not in known
    ]


def _cases() -> list[tuple[str, int, str]]:
    return [
        (path.relative_to(ROOT).as_posix(), number, line)
        for path in COMMAND_DOCS
        for number, line in command_lines(path)
        if any(True for _ in ztplan_invocations(line))
    ]


def test_docs_show_ztplan_commands() -> None:
    """The collection below is not vacuous."""
    files = {case[0] for case in _cases()}
    assert {"README.md", "docs/guide.md"} <= files


@pytest.mark.parametrize(("doc", "number", "line"), _cases())
def test_ztplan_commands_and_options_exist(doc: str, number: int, line: str) -> None:
    problems = [p for words in ztplan_invocations(line) for p in problems_in(words)]
    assert not problems, f"{doc}:{number}: {line!r}: {'; '.join(problems)}"


def test_the_checker_catches_mistakes() -> None:
    assert problems_in(["plan", "specs/gw1.yaml", "--netns", "x"]) == []
    assert problems_in(["plna", "specs/gw1.yaml"]) == ["no command 'plna'"]
    assert problems_in(["plan", "--no-such-option"]) == [
        "`ztplan plan` has no option --no-such-option"
    ]
    assert problems_in(["sandbox", "upp"]) == ["no command sandbox 'upp'"]
    assert problems_in(["sandbox", "up", "--netns", "x"]) == [
        "`ztplan sandbox up` has no option --netns"
    ]
    assert problems_in(["--debug", "COMMAND"]) == []
    assert list(ztplan_invocations('eval "$(ztplan sandbox env)"')) == [["sandbox", "env"]]
    assert list(ztplan_invocations("X=1 sudo .venv/bin/ztplan plan a.yaml | cat")) == [
        ["plan", "a.yaml"]
    ]
    assert list(ztplan_invocations("Imported by ztplan import")) == []
    assert list(ztplan_invocations("ip netns exec ztplan-sandbox sysctl")) == []


# --- the guide's specs ---------------------------------------------------------------


def _yaml_blocks(path: Path) -> list[tuple[int, str]]:
    blocks, _ = split_markdown(path.read_text())
    return [(b.line, "\n".join(b.lines) + "\n") for b in blocks if b.lang in ("yaml", "yml")]


def _is_spec(text: str) -> bool:
    lines = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    return bool(lines) and lines[0].strip() == "version: 1"


def test_guide_has_specs() -> None:
    assert sum(_is_spec(text) for _, text in _yaml_blocks(GUIDE)) >= 6


@pytest.mark.parametrize(("number", "text"), _yaml_blocks(GUIDE))
def test_guide_yaml_blocks(number: int, text: str) -> None:
    """A block that starts with `version: 1` is a whole spec and must be a valid one; any
    other block (an excerpt) must at least be YAML."""
    where = f"docs/guide.md:{number}"
    if _is_spec(text):
        parse_spec(text, where)
    else:
        yaml.safe_load(text)


# --- README's first lines and make targets -------------------------------------------


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m[1] for m in re.finditer(r"^([\w.-]+)\s*:(?!=)", text, re.M)}


def test_readme_starts_with_the_demo_and_test_commands() -> None:
    """README's first lines are a contract (.ci/run runs the same on a fresh Debian): one
    command that sets everything up and runs the demo, one that runs the tests, as
    root, where a fresh Debian has no sudo and no make."""
    head = README.read_text().splitlines()[:8]
    assert head[0] == "# ztplan"
    (demo,) = [line for line in head if "make demo" in line]
    assert demo.startswith("apt-get update && apt-get install -y make && make demo "), demo
    assert any(line.startswith("make test ") for line in head), head
    assert {"demo", "test"} <= _make_targets()


def test_readme_commands_need_no_sudo_and_no_spec_that_is_not_there() -> None:
    """Every command README shows runs in a root shell on a fresh Debian as written."""
    for number, line in command_lines(README):
        assert not re.search(r"(?:^|[;&|(`]\s*)sudo\s+\S", line), f"README.md:{number}: {line!r}"
        for spec in re.findall(r"(?<![\w/$.-])specs/[\w.-]+\.ya?ml\b", line):
            assert (ROOT / spec).exists(), f"README.md:{number}: {spec} does not exist"


def test_make_targets_in_readme_exist() -> None:
    shown = {
        m[1]
        for _, line in command_lines(README)
        for m in re.finditer(r"(?:^|\s)make ([a-z][\w-]*)", line)
    }
    assert {"demo", "test"} <= shown
    assert shown <= _make_targets(), shown - _make_targets()


# --- links -----------------------------------------------------------------------------


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    _, prose = split_markdown(path.read_text())
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.M):
        text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def _links() -> list[tuple[str, int, str]]:
    out = []
    for path in LINKED_DOCS:
        _, prose = split_markdown(path.read_text())
        for link in LINK.finditer(prose):
            out.append(
                (path.relative_to(ROOT).as_posix(), prose.count("\n", 0, link.start()) + 1, link[1])
            )
    return out


def test_docs_have_links() -> None:
    assert any(doc == "README.md" and "guide.md" in target for doc, _, target in _links())


@pytest.mark.parametrize(("doc", "number", "target"), _links())
def test_relative_links_resolve(doc: str, number: int, target: str) -> None:
    if re.match(r"[a-z][\w+.-]*:", target):  # https:, mailto:, ...
        return
    file, _, anchor = target.partition("#")
    source = ROOT / doc
    resolved = (source.parent / file).resolve() if file else source
    assert resolved.exists(), f"{doc}:{number}: {target}: no such file"
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{doc}:{number}: {target}: no heading #{anchor}"
