"""The command line: options -> `ztplan.run` -> `ztplan.render` -> exit code.

Exit codes (Terraform's), and only here: 0 success (with --detailed-exitcode: no changes);
2 success with changes (--detailed-exitcode, and `drift` always); 1 any error, usage errors
included (click's own 2 never leaks out), as one line on stderr. `--debug` (a traceback
with errors), `--no-color` and `--version` are understood anywhere on the line. Heavy
modules are imported inside the commands, so `ztplan --help` stays fast.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from ztplan.model import ApplyOutcome, Plan
    from ztplan.run import Run

# typer 0.29 prints each argument's Python type (`<str>`) in plain help; the metavars say
# what to pass, in the words a user knows.
if hasattr(typer.core, "TyperArgument"):
    typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]

# typer 0.29 coerces every parameter of the command run through a pydantic TypeAdapter,
# built before it looks at the value, even for a flag left unset: ten adapters for a
# plain plan (~10 ms), and `ztplan plan --help` imported pydantic before printing a line.
# Most values already are what the annotation asks (a str, None, a default, a bool flag),
# and a path without typer's options is Path(value) once typer's readable check passes:
# those are taken so; anything else (a float or a choice typed on the line, a bool from
# the environment) goes through typer's own coercion, built then, with its own errors.
if hasattr(typer.core, "_TyperParameter") and hasattr(typer, "_coercion"):
    from dataclasses import dataclass as _dataclass

    @_dataclass(frozen=True)
    class _AsParsed(typer._coercion.RuntimeParam):
        descriptor: Any

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            annotation, info = self.annotation, self.parameter_info
            if annotation is Path:  # typer checks a default too: an unreadable state dir
                plain = (
                    not (info.exists or info.writable or info.resolve_path or info.allow_dash)
                    and info.file_okay
                    and info.dir_okay
                    and info.path_type is None
                )
                if plain and isinstance(value, str | Path) and "\0" not in str(value):
                    if not info.readable or not os.path.exists(value) or os.access(value, os.R_OK):
                        return Path(value)
            elif isinstance(annotation, type) and isinstance(value, annotation):
                if annotation is bool or type(value) is not bool:  # True is no int here
                    return value
            if annotation == list[str] and all(type(item) is str for item in value):
                return list(value)
            coercion = typer._coercion.build_runtime_param(self.descriptor)
            return coercion._coerce_value(value, param=param, ctx=ctx)

    def _as_parsed(self: Any) -> Any:
        if self._runtime_param is None and self.type_descriptor.file_annotation is None:
            d = self.type_descriptor
            self._runtime_param = _AsParsed(
                annotation=d.annotation, parameter_info=d.parameter_info, descriptor=d
            )
        return self._runtime_param

    typer.core._TyperParameter.get_runtime_param = _as_parsed  # type: ignore[method-assign]

app = typer.Typer(
    name="ztplan",
    help="Declarative ZeroTier exit gateways: plan and apply firewall, sysctl, ndppd and "
    "controller routes from a spec in git.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,  # plain help: importing rich's formatter costs ~50 ms per run
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
sandbox_app = typer.Typer(
    help="A throwaway gateway in a network namespace to try ztplan on.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(sandbox_app, name="sandbox")

DEFAULT_SPEC = "specs/gateway.yaml"
"""What `plan` and `validate` read when no spec is named (README says so); `apply` and
`drift` never guess: they change or judge a host."""
_flags = {"debug": False, "color": True}


class Format(StrEnum):
    human = "human"
    json = "json"
    markdown = "markdown"


class DriftFormat(StrEnum):
    human = "human"
    json = "json"
    markdown = "markdown"
    prometheus = "prometheus"


class ControllerKind(StrEnum):
    central = "central"
    central_v2 = "central-v2"
    local = "local"


SpecArg = Annotated[
    str | None,
    typer.Argument(
        metavar="SPEC",
        help=f"Spec file (plan, validate: default {DEFAULT_SPEC}).",
        show_default=False,
    ),
]
RepoOpt = Annotated[
    str | None,
    typer.Option(
        "--repo",
        metavar="DIR|URL",
        help="Git repository (a path, or a URL cloned into the state dir) to read the spec from.",
    ),
]
FetchOpt = Annotated[bool, typer.Option("--fetch", help="Fetch the --repo URL first.")]
RefOpt = Annotated[str | None, typer.Option("--ref", metavar="REF", help="Commit, branch or tag.")]
NetnsOpt = Annotated[
    str | None, typer.Option("--netns", metavar="NAME", help="Act inside this network namespace.")
]
StateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        metavar="DIR",
        envvar="ZTPLAN_STATE_DIR",
        help="Where state, locks and caches live.",
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", help="Output format.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
TargetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        metavar="ADDRESS",
        help="Only this resource address (or prefix, "
        "e.g. firewall.ipv4) and what it depends on; repeatable.",
    ),
]
RootOpt = Annotated[
    Path,
    typer.Option(
        "--root",
        metavar="DIR",
        envvar="ZTPLAN_ROOT",
        help="Where `persist` writes boot files: / on a real host.",
    ),
]
NoVerifyOpt = Annotated[
    bool,
    typer.Option(
        "--no-verify",
        help="Do not prove the gateway's flows with real packets through a twin of it.",
    ),
]
LockTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        metavar="SECONDS",
        help="Wait this long for the target's lock (default: fail at once).",
        show_default=False,
    ),
]


def _color() -> bool:
    """Colours only on a terminal, and not with --no-color or NO_COLOR set to anything but
    "" (no-color.org)."""
    return _flags["color"] and sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _out(text: str) -> None:
    sys.stdout.write(text)


def _err(text: str) -> None:
    sys.stderr.write(text)


def _fail(lines: list[str], as_json: bool) -> NoReturn:
    from ztplan import render

    _err(render.errors(lines, as_json))
    raise typer.Exit(1)


def _guard(as_json: bool, body: Callable[[], int]) -> None:
    """The one place that turns errors into exit codes."""
    from ztplan.errors import ZtplanError

    try:
        code = body()
    except ZtplanError as error:
        if _flags["debug"]:
            traceback.print_exc()
        _fail(error.lines(), as_json)
    except KeyboardInterrupt:  # typer would make it a silent exit 130; ours is 1, said
        _fail(["interrupted (Ctrl-C)"], as_json)
    except (typer.Exit, typer.Abort, BrokenPipeError):
        raise
    except Exception as error:  # a bug: say so, show the traceback only with --debug
        if _flags["debug"]:
            traceback.print_exc()
        _fail(
            [
                f"internal error: {error.__class__.__name__}: {error} "
                "(run with --debug for a traceback and report it)"
            ],
            as_json,
        )
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from ztplan import __version__

        print(f"ztplan {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Tracebacks with errors (anywhere).")
    ] = False,
    no_color: Annotated[
        bool, typer.Option("--no-color", help="No colours (also: NO_COLOR set, or not a tty).")
    ] = False,
) -> None:
    _flags["debug"] = _flags["debug"] or debug
    _flags["color"] = _flags["color"] and not no_color


def _options(spec: str | None, **given: Any) -> Any:
    from ztplan.run import Options

    targets = tuple(given.pop("targets", None) or ())
    return Options(spec=spec, targets=targets, **given)


def _open(spec: str | None, **given: Any) -> Run:
    from ztplan.run import open_run

    return open_run(_options(spec, **given))


def _needs(spec: str | None, what: str) -> str:
    if spec is None:
        from ztplan.errors import ZtplanError

        raise ZtplanError(f"name the spec to {what}: ztplan {what} SPEC", "no default is guessed")
    return spec


@app.command(short_help="Check a spec without touching anything.")
def validate(
    spec: SpecArg = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    json_: JsonOpt = False,
    expand: Annotated[
        bool, typer.Option("--expand", help="Print it with the gateway shorthand written out.")
    ] = False,
) -> None:
    """Check the spec (schema and meaning) without touching live state."""

    def body() -> int:
        from ztplan import render
        from ztplan.errors import Problems
        from ztplan.run import validate_spec

        loaded, source, found = validate_spec(_options(spec or DEFAULT_SPEC, repo=repo, ref=ref))
        _err(render.findings([f for f in found if f.severity != "error"]))
        errors = [f for f in found if f.severity == "error"]
        if errors:
            raise Problems([render.findings([e]).removeprefix("Error: ").strip() for e in errors])
        if expand:
            from ztplan.run import expanded

            _out(expanded(loaded, json_))
        else:
            _out(render.validation(source, loaded.target.name, "json" if json_ else "human"))
        return 0

    _guard(json_, body)


@app.command(short_help="Show what apply would change.")
def plan(
    spec: SpecArg = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    fetch: FetchOpt = False,
    netns: NetnsOpt = None,
    state_dir: StateDirOpt = Path("state"),
    fmt: FormatOpt = Format.human,
    json_: JsonOpt = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode", help="Exit 2 when there are changes, 0 when there are none."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "-o", "--out", metavar="FILE", help="Also save the plan, to apply it exactly."
        ),
    ] = None,
    lock_timeout: LockTimeoutOpt = 0.0,
    target: TargetOpt = None,
    root: RootOpt = Path("/"),
    no_verify: NoVerifyOpt = False,
) -> None:
    """Show what apply would change, and what it does to the gateway's flows."""
    fmt = Format.json if json_ else fmt

    def body() -> int:
        from ztplan import render
        from ztplan.errors import ZtplanError

        run = _open(
            spec or DEFAULT_SPEC,
            repo=repo,
            ref=ref,
            fetch=fetch,
            netns=netns,
            state_dir=state_dir,
            targets=target,
            lock_timeout=lock_timeout,
            root=root,
            verify=not no_verify,
        )
        result = run.plan(out)
        _out(render.plan(result, fmt.value, _color()))
        if result.errors:
            raise ZtplanError(
                f"the plan has {len(result.errors)} error(s): {result.errors[0].message}"
            )
        return 2 if detailed_exitcode and result.has_changes else 0

    _guard(fmt is Format.json, body)


class _Stopper:
    """Ctrl-C during an apply: the first stops after the current step and undoes what was
    done; a second one stops at once (the journal tells the next run what was done).
    Before the go-ahead (`arm`), Ctrl-C is an ordinary interrupt."""

    def __init__(self) -> None:
        self.armed = False
        self.stopping = False
        self._previous: Any = None

    def __enter__(self) -> _Stopper:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def arm(self) -> None:
        self.armed = True

    def requested(self) -> bool:
        return self.stopping

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            _err(
                "\nStopped at once, in the middle of a step: nothing is undone. The journal in "
                "the state dir records each step; the next plan says what is in place.\n"
            )
        if not self.armed or self.stopping:
            raise KeyboardInterrupt
        self.stopping = True
        _err(
            "\nStopping after the current step; what was applied will be undone. "
            "Ctrl-C again to stop at once.\n"
        )


def _ask() -> bool:
    """The question and its prompt go to stderr (input() would print the prompt on
    stdout, inside `apply --json`'s document); Ctrl-C or EOF is a no."""
    try:
        _err("\nDo you want to apply these changes? Only 'yes' will be accepted.\n")
        _err("  Enter a value: ")
        sys.stderr.flush()
        answer = input()
    except (EOFError, KeyboardInterrupt):
        _err("\n")
        return False
    if not sys.stdin.isatty():
        _err("\n")  # a terminal's echo of the answer ends the prompt's line; a pipe's does not
    return answer.strip() == "yes"


class _Operator:
    """The person at the terminal during an apply: is shown the plan (not with --json),
    approves it (not asked with --auto-approve, nor for a saved plan: it was reviewed),
    may press Ctrl-C (`_Stopper`, armed once the go-ahead is given), and is told the
    outcome: on stderr, or as `apply --json`'s one document on stdout."""

    def __init__(self, fmt: Format, auto_approve: bool) -> None:
        self.fmt = fmt
        self.auto_approve = auto_approve
        self.stopper = _Stopper()

    def apply(self, run: Run, **options: Any) -> ApplyOutcome | None:
        """`run.apply` with the operator's hooks; the outcome, rendered (None: cancelled)."""
        from ztplan import render
        from ztplan.errors import ApplyFailed
        from ztplan.run import Cancelled

        as_json = self.fmt is Format.json
        try:
            with self.stopper:
                outcome = run.apply(
                    approve=None if self.auto_approve else self._approve,
                    reporter=render.reporter(_color()),
                    shown=lambda plan: self._shown(plan, saved=run.saved is not None),
                    stop=self.stopper.requested,
                    **options,
                )
        except Cancelled as said:
            _err(f"{said}\n")
            return None
        except ApplyFailed as failed:
            if as_json:
                _out(render.apply_outcome(failed.outcome(run.target), "json"))
            raise
        (_out if as_json else _err)(render.apply_outcome(outcome, self.fmt.value, _color()))
        return outcome

    def _shown(self, plan: Plan, saved: bool) -> None:
        from ztplan import render

        if self.fmt is not Format.json:
            _out(render.plan(plan, self.fmt.value, _color()))
        if saved or self.auto_approve:
            self.stopper.arm()

    def _approve(self, plan: Plan) -> bool:
        if not _ask():
            return False
        self.stopper.arm()
        return True


@app.command(short_help="Make the changes, in a safe order, under the lock.")
def apply(
    spec: Annotated[
        str | None,
        typer.Argument(
            metavar="SPEC|PLANFILE",
            help="Spec file, or a plan saved with plan -o (*.json).",
            show_default=False,
        ),
    ] = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    fetch: FetchOpt = False,
    netns: NetnsOpt = None,
    state_dir: StateDirOpt = Path("state"),
    fmt: FormatOpt = Format.human,
    json_: JsonOpt = False,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Do not ask.")] = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    confirm_within: Annotated[
        float,
        typer.Option(
            "--confirm-within",
            metavar="SECONDS",
            help="Undo it all by itself unless `ztplan "
            "confirm` (or Enter here) comes in time; survives this session dying.",
        ),
    ] = 0.0,
    target: TargetOpt = None,
    allow_non_descendant: Annotated[
        bool,
        typer.Option(
            "--allow-non-descendant",
            help="Apply a commit that does not descend from the last applied one (a rollback).",
        ),
    ] = False,
    require_signed: Annotated[
        bool,
        typer.Option("--require-signed", help="Refuse a spec commit without a good signature."),
    ] = False,
    root: RootOpt = Path("/"),
    no_verify: NoVerifyOpt = False,
    allow_lockout: Annotated[
        bool,
        typer.Option(
            "--allow-lockout",
            help="Apply even if it cuts a management port (SSH) reachable now from the WAN.",
        ),
    ] = False,
) -> None:
    """Make the changes, in a safe order, under the target's lock; refused when it would
    cut a management port (SSH) that is reachable now."""
    fmt = Format.json if json_ else fmt

    def body() -> int:
        run = _open(
            _needs(spec, "apply"),
            repo=repo,
            ref=ref,
            fetch=fetch,
            netns=netns,
            state_dir=state_dir,
            targets=target,
            lock_timeout=lock_timeout,
            root=root,
            verify=not no_verify,
        )
        outcome = _Operator(fmt, auto_approve).apply(
            run,
            confirm_within=confirm_within,
            allow_non_descendant=allow_non_descendant,
            require_signed=require_signed,
            allow_lockout=allow_lockout,
        )
        if outcome is None:  # cancelled at the prompt
            return 1
        if outcome.confirm_by is not None:  # the lock is released: the reverter may need it
            return _await_confirmation(state_dir, run.target, outcome.confirm_by)
        return 0

    _guard(fmt is Format.json, body)


def _await_confirmation(state_dir: Path, target: str, confirm_by: float) -> int:
    """At a terminal, a line typed before the deadline confirms; otherwise say how to."""
    import select
    import time

    from ztplan.run import confirm_apply, state_dir_flag

    left = int(confirm_by - time.time())
    how = f"ztplan confirm --target-name {target}" + state_dir_flag(state_dir)
    if not sys.stdin.isatty():
        _err(f"Not confirmed yet: run `{how}` within {left} s, or the changes are reverted.\n")
        return 0
    _err(
        f"Press Enter within {left} s to keep these changes (or run `{how}`); "
        "otherwise they are reverted.\n"
    )
    ready, _, _ = select.select([sys.stdin], [], [], max(confirm_by - time.time(), 0))
    if ready and sys.stdin.readline():
        confirm_apply(state_dir, target)
        _err("Confirmed: the changes stay.\n")
        return 0
    _err("No confirmation: the changes are being reverted.\n")
    return 1


@app.command("confirm", short_help="Keep an apply made with --confirm-within.")
def confirm_cmd(
    target: Annotated[
        str | None,
        typer.Option(
            "--target-name", metavar="NAME", help="The target (default: the only one waiting)."
        ),
    ] = None,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Keep an apply made with --confirm-within (before its deadline)."""

    def body() -> int:
        from ztplan.run import confirm_apply

        _out(f"Confirmed: the last apply of {confirm_apply(state_dir, target)} stays.\n")
        return 0

    _guard(False, body)


@app.command("revert-at-deadline", hidden=True)
def revert_at_deadline(
    state_dir: Annotated[Path, typer.Option("--state-dir")],
    target: Annotated[str, typer.Option("--target-name")],
    journal_id: Annotated[str, typer.Option("--journal-id")],
) -> None:
    """The detached reverter started by apply --confirm-within (not for people)."""

    def body() -> int:
        import time

        from ztplan.run import revert_at_deadline as revert

        outcome = revert(state_dir, target, journal_id)
        _out(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {target}: {outcome}\n")
        return 0

    _guard(False, body)


def _controller(
    kind: ControllerKind | None, url: str | None, token_env: str | None, token_file: str | None
) -> dict[str, str] | None:
    """import's --controller-* options, as the spec's `controller:` fields ("" unset)."""
    if kind is None:
        return None
    return {
        "kind": kind.value,
        "url": url or "",
        "token_env": token_env or "",
        "token_file": token_file or "",
    }


@app.command("import", short_help="Write the spec of a gateway built by hand.")
def import_cmd(
    netns: NetnsOpt = None,
    target_name: Annotated[
        str | None,
        typer.Option("--target-name", metavar="NAME", help="target.name (default: netns or host)."),
    ] = None,
    network: Annotated[
        list[str] | None,
        typer.Option(
            "--network", metavar="NWID", help="A network to import routes and pools of; repeatable."
        ),
    ] = None,
    controller_kind: Annotated[
        ControllerKind | None,
        typer.Option("--controller-kind", help="The controller --network lives on."),
    ] = None,
    controller_url: Annotated[
        str | None,
        typer.Option("--controller-url", metavar="URL", help="Its API URL (default per kind)."),
    ] = None,
    token_env: Annotated[
        str | None,
        typer.Option(
            "--token-env", metavar="VAR", help="Variable holding its token (not the token)."
        ),
    ] = None,
    token_file: Annotated[
        str | None, typer.Option("--token-file", metavar="FILE", help="File holding its token.")
    ] = None,
    ndppd_config: Annotated[
        str, typer.Option("--ndppd-config", metavar="FILE", help="ndppd's config file.")
    ] = "/etc/ndppd.conf",
    ndppd_pidfile: Annotated[
        str | None,
        typer.Option(
            "--ndppd-pidfile", metavar="FILE", help="The -p of an ndppd systemd does not run."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", metavar="FILE", help="Write the spec here, not to stdout."),
    ] = None,
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt", help="Move the imported rules into ztplan's own chains: ztplan owns them."
        ),
    ] = False,
    state_dir: StateDirOpt = Path("state"),
    lock_timeout: LockTimeoutOpt = 0.0,
) -> None:
    """Write the spec of a gateway configured by hand; with --adopt, take its rules over."""

    def body() -> int:
        from ztplan.run import import_host

        text, adopted, problems = import_host(
            netns=netns,
            target_name=target_name,
            networks=network or [],
            controller=_controller(controller_kind, controller_url, token_env, token_file),
            ndppd_config=ndppd_config,
            ndppd_pidfile=ndppd_pidfile,
            adopt=adopt,
            state_dir=state_dir,
            lock_timeout=lock_timeout,
        )
        if adopt:
            _err(f"Adopted {adopted} rule(s): moved into ztplan's own chains.\n")
        if out is None:
            _out(text)
        else:
            from ztplan.run import write_output

            write_output(out, text)
            _err(f"Wrote {out}.\n")
        if problems:
            _err(f"Warning: {problems} problem(s) to fix before applying: see the header.\n")
        return 0

    _guard(False, body)


@app.command(short_help="Print the spec's JSON Schema.")
def schema() -> None:
    """Print the JSON Schema of a spec (what schema/ztplan-spec.json holds)."""

    def body() -> int:
        from ztplan.run import schema_text

        _out(schema_text())
        return 0

    _guard(False, body)


@app.command(short_help="Check for drift (cron, CI): exit 0 clean, 2 drift, 1 error.")
def drift(
    spec: Annotated[
        str | None, typer.Argument(metavar="SPEC", help="Spec file.", show_default=False)
    ] = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    fetch: FetchOpt = False,
    netns: NetnsOpt = None,
    state_dir: StateDirOpt = Path("state"),
    fmt: Annotated[
        DriftFormat, typer.Option("--format", help="Output format.")
    ] = DriftFormat.human,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            metavar="FILE",
            help="Also write Prometheus text here "
            "(node_exporter's textfile collector), even when the check fails.",
        ),
    ] = None,
    lock_timeout: Annotated[
        float,
        typer.Option(
            "--lock-timeout", metavar="SECONDS", help="Wait this long for a running apply."
        ),
    ] = 60.0,
    root: RootOpt = Path("/"),
    no_verify: NoVerifyOpt = False,
) -> None:
    """Plan for cron and CI: exit 0 clean, 2 drift (or a flow that should work does not),
    1 error; quiet when clean.

    Never changes anything, and holds the target's lock only while it reads the host.
    """

    def body() -> int:
        from ztplan import render
        from ztplan.errors import ZtplanError
        from ztplan.run import check_drift

        report, previous = check_drift(
            _options(
                _needs(spec, "drift"),
                repo=repo,
                ref=ref,
                fetch=fetch,
                netns=netns,
                state_dir=state_dir,
                root=root,
                verify=not no_verify,
            ),
            lock_timeout,
        )
        applied = (previous.applied_at, previous.spec.commit) if previous else (None, None)
        if metrics_file is not None:
            from ztplan.run import write_output

            write_output(metrics_file, render.metrics(report, *applied))
        if report.plan is None:
            raise ZtplanError(report.error or "the drift check failed")
        prometheus = fmt is DriftFormat.prometheus
        _out(render.metrics(report, *applied) if prometheus else render.drift(report, fmt.value))
        failing = report.plan.verification.failing_now if report.plan.verification else []
        return 2 if report.plan.changes or report.plan.errors or failing else 0

    _guard(fmt is DriftFormat.json, body)


@app.command(short_help="Prove the gateway's flows with real packets (0 ok, 2 not, 1 error).")
def verify(
    spec: Annotated[
        str | None,
        typer.Argument(
            metavar="SPEC", help=f"Spec file (default {DEFAULT_SPEC}).", show_default=False
        ),
    ] = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    netns: NetnsOpt = None,
    state_dir: StateDirOpt = Path("state"),
    json_: JsonOpt = False,
    lock_timeout: Annotated[
        float,
        typer.Option("--lock-timeout", metavar="SECONDS", help="Wait this long for an apply."),
    ] = 60.0,
) -> None:
    """Build a twin of the gateway out of network namespaces, load its whole packet filter
    and send real packets for its flows: exit 0 when each behaves as declared, 2 when one
    does not (naming who dropped it), 1 on error."""

    def body() -> int:
        from ztplan import render

        run = _open(spec or DEFAULT_SPEC, repo=repo, ref=ref, netns=netns, state_dir=state_dir)
        result = run.verify(lock_timeout)
        _out(render.verification(result, "json" if json_ else "human", _color()))
        return 2 if result.failing_now else 0

    _guard(json_, body)


@app.command(short_help="Print a saved plan, or the recorded state.")
def show(
    planfile: Annotated[
        Path | None,
        typer.Argument(metavar="PLANFILE", help="A plan saved with plan -o.", show_default=False),
    ] = None,
    state: Annotated[bool, typer.Option("--state", help="Show what the applies recorded.")] = False,
    target: Annotated[
        str | None, typer.Option("--target-name", metavar="NAME", help="Only this target's state.")
    ] = None,
    state_dir: StateDirOpt = Path("state"),
    fmt: FormatOpt = Format.human,
    json_: JsonOpt = False,
) -> None:
    """Print a saved plan, or the recorded state of each target."""
    fmt = Format.json if json_ else fmt

    def body() -> int:
        from ztplan import render
        from ztplan.errors import ZtplanError
        from ztplan.run import read_plan, recorded_states

        if state:
            _out(render.states(recorded_states(state_dir, target), fmt.value))
            return 0
        if planfile is None:
            raise ZtplanError("name a plan file, or pass --state")
        _out(render.plan(read_plan(planfile), fmt.value, _color()))
        return 0

    _guard(fmt is Format.json, body)


@app.command("force-unlock", short_help="Remove a lock left by a run that died.")
def force_unlock_cmd(
    lock_id: Annotated[str, typer.Argument(metavar="LOCK_ID", help="The lock id the error named.")],
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Remove a target's lock, by its id (the error that reported it names it)."""

    def body() -> int:
        from ztplan.run import force_unlock

        path, holder = force_unlock(state_dir, lock_id)
        _out(f"Removed {path} (held by {holder}).\n")
        return 0

    _guard(False, body)


def _sandbox(action: str) -> None:
    def body() -> int:
        from ztplan import sandbox

        if action == "status":
            text, up = sandbox.sandbox_status()
            _out(text + "\n")
            return 0 if up else 1
        _out(getattr(sandbox, f"sandbox_{action}")() + "\n")
        return 0

    _guard(False, body)


@sandbox_app.command("up", short_help="Build the sandbox and start its controller emulator.")
def sandbox_up() -> None:
    """Create the ztplan-sandbox namespaces (WAN eth0, ZeroTier-like zt0) and the emulator."""
    _sandbox("up")


@sandbox_app.command("env", short_help="Print the lines that point ztplan at the sandbox.")
def sandbox_env() -> None:
    """Print the shell lines that point ztplan at the sandbox's controller emulator."""
    _sandbox("env")


@sandbox_app.command("down", short_help="Delete the sandbox and stop its emulator.")
def sandbox_down() -> None:
    """Delete the sandbox namespaces and stop the emulator."""
    _sandbox("down")


@sandbox_app.command("status", short_help="Say whether the sandbox is up, with its addresses.")
def sandbox_status() -> None:
    """Say whether the sandbox exists, with its interfaces and addresses."""
    _sandbox("status")


def _usage_errors() -> tuple[type[Exception], type[Exception] | None]:
    """click's UsageError and NoArgsIsHelpError, from the click typer really uses: typer
    0.29 vendors its own (`typer._click`), whose classes `import click` does not catch;
    earlier typers use click itself. `typer.BadParameter` is a UsageError in both."""
    usage = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    return usage, getattr(sys.modules[usage.__module__], "NoArgsIsHelpError", None)


def _command_path(argv: list[str]) -> str:
    """`ztplan show` for `show --target-name` (click raises some usage errors without a
    context, so the hint would otherwise point at the app's help, not the command's)."""
    command: Any = typer.main.get_command(app)
    path = ["ztplan"]
    for word in (w for w in argv if not w.startswith("-")):
        command = getattr(command, "commands", {}).get(word)
        if command is None:
            break
        path.append(word)
    return " ".join(path)


def _dispatch(argv: list[str]) -> int:
    """Run the app; map click's own outcomes onto ours (usage errors: 1, never 2)."""
    usage_error, no_args_is_help = _usage_errors()
    try:
        result = app(args=argv, prog_name="ztplan", standalone_mode=False)
    except typer.Exit as done:
        return done.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _err("Interrupted.\n")
        return 1
    except usage_error as error:
        ctx: Any = getattr(error, "ctx", None)
        if no_args_is_help is not None and isinstance(error, no_args_is_help):
            _out(ctx.get_help() + "\n" if ctx else "")
            return 0
        where = ctx.command_path if ctx else _command_path(argv)
        message = error.format_message().replace("Value error, ", "")  # type: ignore[attr-defined]
        _err(f"Error: {message} (see `{where} --help`)\n")
        return 1
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> None:
    """The `ztplan` entry point.

    A plan of a large firewall makes ~100,000 objects. The garbage collector would scan
    them again and again while they are built, and the interpreter would free them one by
    one at exit; neither is needed in a process that ends when the command does. So: a
    high collection threshold, and a quick exit once output is flushed and exit handlers
    (the HTTP client's close) have run.
    """
    import atexit
    import gc

    args = list(sys.argv[1:] if argv is None else argv)
    for flag in ("--debug", "--no-color"):  # understood anywhere on the line
        if flag in args and "--" not in args[: args.index(flag)]:
            args.remove(flag)
            _flags["debug" if flag == "--debug" else "color"] = flag == "--debug"
    if "--version" in args[: args.index("--") if "--" in args else None]:
        args = ["--version"]  # `ztplan plan --version` too: DESIGN's common options
    gc.set_threshold(100_000, 50, 50)
    try:
        code = _dispatch(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `ztplan schema | head -1`: the reader is gone, end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 1
    try:
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    atexit._run_exitfuncs()
    os._exit(code)
