"""The command line: parse, call the engine, render, exit. The only place exit codes live.

Exit codes (Terraform's): 0 success (and, with --detailed-exitcode, no changes); 2 success
with changes (--detailed-exitcode only); 1 any error, as one line on stderr.
Heavy modules are imported inside the commands so `ztplan --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from ztplan.model import Plan

app = typer.Typer(
    name="ztplan",
    help="Declarative ZeroTier exit gateways: plan and apply firewall, sysctl, ndppd and "
    "controller routes from a spec in git.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,  # plain help: importing rich's formatter costs ~50 ms per run
)
sandbox_app = typer.Typer(
    help="A throwaway gateway in a network namespace to try ztplan on.", no_args_is_help=True
)
app.add_typer(sandbox_app, name="sandbox")

_debug = False


class Format(StrEnum):
    human = "human"
    json = "json"
    markdown = "markdown"


class DriftFormat(StrEnum):
    human = "human"
    json = "json"
    markdown = "markdown"
    prometheus = "prometheus"


SpecArg = Annotated[
    str | None,
    typer.Argument(
        help="Spec file (default specs/gateway.yaml); a path inside --repo with --ref.",
        show_default=False,
    ),
]
RepoOpt = Annotated[
    str | None,
    typer.Option("--repo", help="Git repository (a path, or a URL cloned into the state dir)."),
]
FetchOpt = Annotated[
    bool, typer.Option("--fetch", help="Fetch the --repo URL's branches and tags first.")
]
RefOpt = Annotated[
    str | None, typer.Option("--ref", help="Commit, branch or tag to read the spec at.")
]
NetnsOpt = Annotated[str | None, typer.Option("--netns", help="Act inside this network namespace.")]
StateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="ZTPLAN_STATE_DIR", help="Where state, locks and caches live."
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", help="Output format.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
TargetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        help="Only this resource address (or prefix, e.g. firewall.ipv4) and what it depends "
        "on; repeatable. The plan says it is partial.",
    ),
]
RootOpt = Annotated[
    Path,
    typer.Option(
        "--root",
        envvar="ZTPLAN_ROOT",
        help="Where the spec's `persist` writes boot files (etc/iptables/...): / on a real "
        "host; a scratch directory for a namespace.",
    ),
]
LockTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--lock-timeout", help="Seconds to wait for the target's lock (default: fail at once)."
    ),
]


def _fail(message: str, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps({"error": message}), file=sys.stderr)
    else:
        print(f"Error: {message}", file=sys.stderr)
    raise typer.Exit(1)


def _guard(as_json: bool, body: Callable[[], int]) -> None:
    """The one place that turns errors into exit codes."""
    from ztplan.errors import ZtplanError

    try:
        code = body()
    except ZtplanError as error:
        if _debug:
            traceback.print_exc()
        _fail(str(error), as_json)
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as error:  # a bug: say so, show the traceback only with --debug
        if _debug:
            traceback.print_exc()
        _fail(
            f"internal error: {error.__class__.__name__}: {error} "
            "(run with --debug for a traceback and report it)",
            as_json,
        )
    raise typer.Exit(code)


def _color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _emit(plan: Plan, fmt: Format) -> None:
    if fmt is Format.json:
        from ztplan.render.jsonplan import render_json

        sys.stdout.write(render_json(plan))
    elif fmt is Format.markdown:
        from ztplan.render.markdown import render_markdown

        sys.stdout.write(render_markdown(plan))
    else:
        from ztplan.render.human import render_plan

        sys.stdout.write(render_plan(plan, color=_color()))


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    global _debug
    _debug = debug


def _spec_findings(spec: Any, file: str) -> list[Any]:
    """What can be known without the live host: the cross-provider checks, ndppd's own,
    and (as root, in a scratch namespace) whether the kernel takes every rule."""
    from ztplan.checks import check_spec
    from ztplan.model import Snapshot

    findings = list(check_spec(spec, None))
    if spec.ndppd is not None:
        from ztplan.providers.ndppd import Ndppd

        findings += Ndppd().check(spec, Snapshot(resources={}, raw={}))
    if spec.firewall is not None and os.geteuid() == 0:
        from ztplan.providers.firewall import Firewall, KernelNormaliser

        Firewall(normalise=KernelNormaliser(), file=file).desired(spec)  # raises on a bad rule
    return findings


@app.command()
def validate(
    spec: SpecArg = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    json_: JsonOpt = False,
    expand: Annotated[
        bool, typer.Option("--expand", help="Print the spec with the gateway shorthand expanded.")
    ] = False,
) -> None:
    """Check the spec (schema and meaning) without touching live state."""

    def body() -> int:
        from ztplan.source import read_spec

        loaded, source = read_spec(spec, repo, ref)
        findings = _spec_findings(loaded, source.path)
        for finding in findings:
            where = f"{finding.address}: " if finding.address else ""
            print(f"{finding.severity.capitalize()}: {where}{finding.message}", file=sys.stderr)
        errors = [f for f in findings if f.severity == "error"]
        if errors:
            from ztplan.errors import ZtplanError

            raise ZtplanError(f"{source.path}: {len(errors)} error(s): {errors[0].message}")
        if expand:
            from ztplan.gateway import dump_data, dump_spec

            sys.stdout.write(
                json.dumps(dump_data(loaded), indent=2) + "\n" if json_ else dump_spec(loaded)
            )
        elif json_:
            print(
                json.dumps(
                    {"valid": True, "spec": source.model_dump(), "target": loaded.target.name}
                )
            )
        else:
            print(f"{source.path}: valid (target {loaded.target.name})")
        return 0

    _guard(json_, body)


def _prepare(
    spec: str | None,
    repo: str | None,
    ref: str | None,
    netns: str | None,
    state_dir: Path,
    fetch: bool = False,
) -> Any:
    from ztplan.host import LocalHost
    from ztplan.plan import build_providers
    from ztplan.source import read_spec
    from ztplan.state import read_state

    loaded, source = read_spec(spec, repo, ref, cache_dir=state_dir / "cache", fetch=fetch)
    host = LocalHost(netns)
    providers = build_providers(loaded, source.path, state_dir / "cache")
    previous = read_state(state_dir, loaded.target.name)
    return loaded, source, host, providers, previous


def _journal_notes(state_dir: Path, target: str) -> list[Any]:
    """What an earlier apply's journal says: interrupted, or waiting for confirmation.
    An interrupted apply's finding has the address `apply.interrupted`."""
    import time

    from ztplan.journal import journal_path, read_journal
    from ztplan.lock import pid_alive
    from ztplan.model import Finding

    journal = read_journal(journal_path(state_dir, target))
    if journal is None:
        return []
    if journal.confirm_by is not None and journal.confirm_by > time.time():
        left = int(journal.confirm_by - time.time())
        return [
            Finding(
                severity="warning",
                address="apply.unconfirmed",
                message=f"the last apply is not confirmed: it is reverted in {left} s "
                f"unless `ztplan confirm --target-name {target}` comes first",
            )
        ]
    if pid_alive(journal.pid, journal.host):
        return []
    return [
        Finding(
            severity="warning",
            address="apply.interrupted",
            message=journal.summary() + "; this plan is made from the live state as it is",
        )
    ]


@app.command()
def plan(
    spec: SpecArg = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
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
        Path | None, typer.Option("-o", "--out", help="Also save the plan (JSON).")
    ] = None,
    lock_timeout: LockTimeoutOpt = 0.0,
    target: TargetOpt = None,
    fetch: FetchOpt = False,
    root: RootOpt = Path("/"),
) -> None:
    """Show what apply would change."""
    fmt = Format.json if json_ else fmt

    def body() -> int:
        import contextlib

        from ztplan.lock import lock_path, locked
        from ztplan.persist import make_persist
        from ztplan.plan import make_plan
        from ztplan.state import write_atomic

        loaded, source, host, providers, previous = _prepare(
            spec, repo, ref, netns, state_dir, fetch
        )
        persist, said = make_persist(loaded.persist, root, loaded, host.netns)
        guard = (
            locked(lock_path(state_dir, loaded.target.name), "plan", lock_timeout)
            if out
            else contextlib.nullcontext()
        )
        with guard:
            notes = [*_journal_notes(state_dir, loaded.target.name), *said]
            result, _ = make_plan(
                loaded, source, host, providers, previous, notes, target or (), persist
            )
            if out:
                from ztplan.render.jsonplan import render_json

                write_atomic(out, render_json(result), mode=0o600)
        _emit(result, fmt)
        if result.errors:
            from ztplan.errors import ZtplanError

            raise ZtplanError(
                f"the plan has {len(result.errors)} error(s): {result.errors[0].message}"
            )
        return 2 if detailed_exitcode and result.has_changes else 0

    _guard(fmt is Format.json, body)


def _confirm() -> bool:
    print("\nDo you want to apply these changes? Only 'yes' will be accepted.", file=sys.stderr)
    try:
        answer = input("  Enter a value: ")
    except EOFError:
        return False
    return answer.strip() == "yes"


@app.command()
def apply(
    spec: Annotated[
        str | None,
        typer.Argument(
            help="Spec file (default specs/gateway.yaml), or a plan saved with plan -o (*.json).",
            show_default=False,
        ),
    ] = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    netns: NetnsOpt = None,
    state_dir: StateDirOpt = Path("state"),
    fmt: FormatOpt = Format.human,
    json_: JsonOpt = False,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Apply without asking.")
    ] = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    confirm_within: Annotated[
        float,
        typer.Option(
            "--confirm-within",
            help="Revert everything by itself unless `ztplan confirm` (or a keypress here) "
            "comes within SECONDS; the revert survives this session dying.",
        ),
    ] = 0.0,
    target: TargetOpt = None,
    fetch: FetchOpt = False,
    allow_non_descendant: Annotated[
        bool,
        typer.Option(
            "--allow-non-descendant",
            help="Apply a commit that does not descend from the last applied one (a rollback).",
        ),
    ] = False,
    require_signed: Annotated[
        bool,
        typer.Option(
            "--require-signed",
            help="Refuse a spec commit without a good signature (git verify-commit).",
        ),
    ] = False,
    root: RootOpt = Path("/"),
) -> None:
    """Make the changes, in a safe order, under the target's lock."""
    fmt = Format.json if json_ else fmt

    def body() -> int:
        import time

        from ztplan.apply import apply_plan, load_plan, refuse_if_stale, refuse_stale_saved_plan
        from ztplan.errors import ZtplanError
        from ztplan.host import LocalHost
        from ztplan.lock import lock_path, locked
        from ztplan.persist import make_persist
        from ztplan.plan import build_providers, make_plan
        from ztplan.render.human import HumanReporter
        from ztplan.spec import parse_spec
        from ztplan.state import read_state

        saved = load_plan(Path(spec)) if spec and spec.endswith(".json") else None
        if saved is not None:  # exactly the plan that was reviewed
            if netns is not None and netns != saved.netns:
                raise ZtplanError(f"{spec}: the plan is for netns {saved.netns}, not {netns}")
            loaded = parse_spec(saved.spec_text or "", saved.spec.path)
            source, host = saved.spec, LocalHost(saved.netns)
            providers = build_providers(loaded, source.path, state_dir / "cache")
        else:
            loaded, source, host, providers, _ = _prepare(spec, repo, ref, netns, state_dir, fetch)
        target_name = loaded.target.name
        persist, said = make_persist(loaded.persist, root, loaded, host.netns)
        with locked(lock_path(state_dir, target_name), "apply", lock_timeout):
            previous = read_state(state_dir, target_name)
            if source.repo is not None:
                from ztplan.source import check_commit, resolve_repo

                check_commit(
                    source,
                    resolve_repo(source.repo, state_dir / "cache"),
                    previous.spec.commit if previous else None,
                    allow_non_descendant,
                    require_signed,
                )
            elif require_signed:
                raise ZtplanError(f"{source.path}: --require-signed needs --repo and --ref")
            notes = _journal_notes(state_dir, target_name)
            targets = target or ()
            result, snapshots = make_plan(
                loaded, source, host, providers, previous, [*notes, *said], targets, persist
            )
            if saved is not None:
                refuse_stale_saved_plan(str(spec), saved, result, previous)
                result = saved  # the reviewed changes, against the same live state
            _emit(result, fmt)
            if result.errors:
                raise ZtplanError(
                    f"the plan has {len(result.errors)} error(s); nothing was applied: "
                    f"{result.errors[0].message}"
                )
            interrupted = any(n.address == "apply.interrupted" for n in notes)
            if not result.has_changes and not interrupted:
                return 0
            if not result.has_changes:
                print("Recording the state an interrupted apply left unrecorded.", file=sys.stderr)
            elif not auto_approve and saved is None:
                if not _confirm():
                    print("Apply cancelled; nothing was changed.", file=sys.stderr)
                    return 1
                # Time passed while we asked: apply only what was approved.
                snapshots = refuse_if_stale(result, host, providers)
            confirm_by = time.time() + confirm_within if confirm_within > 0 else None
            managed, carried = result.desired, None
            if any(f.address == "target" for f in result.findings):  # a partial apply
                touched = {c.address for c in result.changes}
                managed = {a: v for a, v in result.desired.items() if a in touched}
                carried = previous.resources if previous else {}
            done = apply_plan(
                result,
                snapshots,
                host,
                providers,
                HumanReporter(_color()),
                state_dir,
                previous,
                managed,
                spec_text=loaded._text,
                confirm_by=confirm_by,
                carried=carried,
                persist=persist,
            )
            if confirm_by is not None:
                from ztplan.revert import arm_reverter

                arm_reverter(state_dir, target_name, done.journal)
        print(f"Apply complete. State serial {done.state.serial} written.", file=sys.stderr)
        if confirm_by is not None:  # the lock is released: the reverter may need it
            return _await_confirmation(state_dir, target_name, confirm_by)
        return 0

    _guard(fmt is Format.json, body)


def _await_confirmation(state_dir: Path, target: str, confirm_by: float) -> int:
    """At a terminal, a line typed before the deadline confirms; otherwise say how to."""
    import select
    import time

    from ztplan.revert import confirm

    left = int(confirm_by - time.time())
    how = f"ztplan confirm --target-name {target} --state-dir {state_dir}"
    if not sys.stdin.isatty():
        print(
            f"Not confirmed yet: run `{how}` within {left} s, or the changes are reverted.",
            file=sys.stderr,
        )
        return 0
    print(
        f"Press Enter within {left} s to keep these changes (or run `{how}`); "
        "otherwise they are reverted.",
        file=sys.stderr,
    )
    ready, _, _ = select.select([sys.stdin], [], [], max(confirm_by - time.time(), 0))
    if ready and sys.stdin.readline():
        confirm(state_dir, target)
        print("Confirmed: the changes stay.", file=sys.stderr)
        return 0
    print("No confirmation: the changes are being reverted.", file=sys.stderr)
    return 1


@app.command("confirm")
def confirm_cmd(
    target: Annotated[
        str | None,
        typer.Option("--target-name", help="The target (default: the only one waiting)."),
    ] = None,
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Keep an apply made with --confirm-within (before its deadline)."""

    def body() -> int:
        from ztplan.errors import ZtplanError
        from ztplan.revert import confirm

        names = (
            [target]
            if target
            else sorted(
                p.name.removesuffix(".journal.json") for p in state_dir.glob("*.journal.json")
            )
        )
        if len(names) != 1:
            raise ZtplanError(
                f"{state_dir}: {'no apply is' if not names else 'several applies are'} "
                "waiting for confirmation",
                "name one with --target-name" if names else None,
            )
        confirm(state_dir, names[0])
        print(f"Confirmed: the last apply of {names[0]} stays.")
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

        from ztplan.revert import run_reverter

        outcome = run_reverter(state_dir, target, journal_id)
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {target}: {outcome}")
        return 0

    _guard(False, body)


class ControllerKind(StrEnum):
    central = "central"
    central_v2 = "central-v2"
    local = "local"


@app.command("import")
def import_cmd(
    netns: NetnsOpt = None,
    target_name: Annotated[
        str | None,
        typer.Option("--target-name", help="target.name of the spec (default: netns or host)."),
    ] = None,
    network: Annotated[
        list[str] | None,
        typer.Option("--network", help="A network id to import routes and pools of (repeatable)."),
    ] = None,
    controller_kind: Annotated[
        ControllerKind | None,
        typer.Option("--controller-kind", help="The controller --network lives on."),
    ] = None,
    controller_url: Annotated[
        str | None, typer.Option("--controller-url", help="Its API URL (default per kind).")
    ] = None,
    token_env: Annotated[
        str | None, typer.Option("--token-env", help="Variable holding its token (not the token).")
    ] = None,
    token_file: Annotated[
        str | None, typer.Option("--token-file", help="File holding its token.")
    ] = None,
    ndppd_config: Annotated[
        str,
        typer.Option(
            "--ndppd-config", help="ndppd's config (in --netns: /etc/ztplan/netns/NS/...)."
        ),
    ] = "/etc/ndppd.conf",
    ndppd_pidfile: Annotated[
        str | None, typer.Option("--ndppd-pidfile", help="The -p of an ndppd systemd does not run.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Write the spec here, not to stdout.")
    ] = None,
    adopt: Annotated[
        bool,
        typer.Option("--adopt", help="Tag the imported rules where they stand: ztplan owns them."),
    ] = False,
    state_dir: StateDirOpt = Path("state"),
    lock_timeout: LockTimeoutOpt = 0.0,
) -> None:
    """Write the spec of a gateway configured by hand; with --adopt, take its rules over."""

    def body() -> int:
        import socket

        from pydantic import ValidationError

        from ztplan.errors import ZtplanError
        from ztplan.host import LocalHost
        from ztplan.importer import adopt_rules, import_spec
        from ztplan.spec import Controller, Spec, parse_spec

        host = LocalHost(netns)
        name = target_name or netns or socket.gethostname().split(".")[0]
        controller, api = None, None
        if controller_kind is not None:
            given = {"url": controller_url, "token_env": token_env, "token_file": token_file}
            try:
                controller = Controller.model_validate(
                    {"kind": controller_kind.value} | {k: v for k, v in given.items() if v}
                )
            except ValidationError as error:
                raise ZtplanError(f"--controller-*: {error.errors()[0]['msg']}") from None
        if network:
            if controller is None:
                raise ZtplanError(
                    "--network needs --controller-kind (central, central-v2 or local)"
                )
            from ztplan.api import shared_client
            from ztplan.plan import CONTROLLER_URL_ENV
            from ztplan.providers.controller import controller_client

            bare = Spec.model_validate(
                {"version": 1, "target": {"name": name}, "controller": controller.model_dump()}
            )
            api = controller_client(bare, shared_client(), os.environ.get(CONTROLLER_URL_ENV))

        def read() -> str:
            return import_spec(
                host,
                target=name,
                networks=network or [],
                controller=controller,
                api=api,
                ndppd_config=ndppd_config,
                ndppd_pidfile=ndppd_pidfile,
            )

        text = read()
        if adopt:
            from ztplan.lock import lock_path, locked
            from ztplan.providers.firewall import KernelNormaliser

            with locked(lock_path(state_dir, name), "import", lock_timeout):
                spec = parse_spec(text, "imported spec")
                cache = KernelNormaliser(cache_dir=state_dir / "cache")
                adopted = adopt_rules(host, spec, cache)
                text = read()  # again: the header no longer counts them as not ztplan's
            print(f"Adopted {len(adopted)} rule(s): they carry the ztplan tag.", file=sys.stderr)
        if out is None:
            sys.stdout.write(text)
        else:
            from ztplan.state import write_atomic

            write_atomic(out, text)
            print(f"Wrote {out}.", file=sys.stderr)
        return 0

    _guard(False, body)


@app.command()
def schema() -> None:
    """Print the JSON Schema of a spec (what schema/ztplan-spec.json holds)."""

    def body() -> int:
        from ztplan.schema import spec_schema

        print(json.dumps(spec_schema(), indent=2))
        return 0

    _guard(False, body)


@app.command()
def drift(
    spec: SpecArg = None,
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
            help="Also write Prometheus text here, atomically (node_exporter textfile collector).",
        ),
    ] = None,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", help="Seconds to wait for a running apply.")
    ] = 60.0,
    root: RootOpt = Path("/"),
) -> None:
    """Plan for cron and CI: exit 0 clean, 2 drift, 1 error; quiet when clean.

    Never changes anything, and holds the target's lock only while it reads the host.
    """

    def body() -> int:
        import time

        from ztplan.lock import lock_path, locked
        from ztplan.plan import make_plan
        from ztplan.render.prometheus import render_metrics
        from ztplan.state import read_state, write_atomic

        checked_at = time.time()
        result = None
        target_name = "unknown"
        previous = None
        try:
            from ztplan.host import LocalHost
            from ztplan.persist import make_persist
            from ztplan.plan import build_providers
            from ztplan.source import read_spec

            loaded, source = read_spec(spec, repo, ref, cache_dir=state_dir / "cache", fetch=fetch)
            target_name = loaded.target.name
            previous = read_state(state_dir, target_name)
            host = LocalHost(netns)
            providers = build_providers(loaded, source.path, state_dir / "cache")
            persist, said = make_persist(loaded.persist, root, loaded, host.netns)
            with locked(lock_path(state_dir, target_name), "drift", lock_timeout):
                result, _ = make_plan(
                    loaded, source, host, providers, previous, said, persist=persist
                )
        finally:  # a failed check is written too: success 0, and when it was tried
            if metrics_file is not None:
                write_atomic(
                    metrics_file,
                    render_metrics(
                        target_name,
                        result,
                        checked_at,
                        previous.applied_at if previous else None,
                        previous.spec.commit if previous else None,
                    ),
                )
        if fmt is DriftFormat.prometheus:
            sys.stdout.write(
                render_metrics(
                    target_name,
                    result,
                    checked_at,
                    previous.applied_at if previous else None,
                    previous.spec.commit if previous else None,
                )
            )
        elif fmt is DriftFormat.json:
            sys.stdout.write(
                json.dumps(
                    {
                        "target": target_name,
                        "checked_at": checked_at,
                        "drifted": [
                            {"address": c.address, "provider": c.provider, "action": c.action.value}
                            for c in result.changes
                        ],
                        "findings": [f.model_dump() for f in result.findings],
                    },
                    indent=2,
                )
                + "\n"
            )
        elif fmt is DriftFormat.markdown and result.changes:
            from ztplan.render.markdown import render_markdown

            sys.stdout.write(render_markdown(result))
        elif result.changes:
            from ztplan.render.human import drift_lines

            sys.stdout.write(drift_lines(result))
        return 2 if result.changes else 0

    _guard(fmt is DriftFormat.json, body)


@app.command()
def show(
    planfile: Annotated[Path | None, typer.Argument(help="A plan saved with plan -o.")] = None,
    state: Annotated[bool, typer.Option("--state", help="Show the recorded state.")] = False,
    target: Annotated[str | None, typer.Option("--target-name", help="Target of --state.")] = None,
    state_dir: StateDirOpt = Path("state"),
    fmt: FormatOpt = Format.human,
    json_: JsonOpt = False,
) -> None:
    """Print a saved plan, or the recorded state."""
    fmt = Format.json if json_ else fmt

    def body() -> int:
        from ztplan.errors import ZtplanError

        if state:
            names = [target] if target else sorted(p.stem for p in state_dir.glob("*.json"))
            if not names:
                raise ZtplanError(f"{state_dir}: no state recorded yet")
            for name in names:
                text = (
                    (state_dir / f"{name}.json").read_text()
                    if (state_dir / f"{name}.json").exists()
                    else None
                )
                if text is None:
                    raise ZtplanError(f"{state_dir}/{name}.json: no such state")
                sys.stdout.write(text)
            return 0
        if planfile is None:
            raise ZtplanError("name a plan file, or pass --state")
        from pydantic import ValidationError

        from ztplan.model import Plan

        try:
            saved = Plan.model_validate_json(planfile.read_bytes())
        except (OSError, ValidationError, ValueError) as error:
            raise ZtplanError(
                f"{planfile}: not a ztplan plan file ({error.__class__.__name__})"
            ) from None
        _emit(saved, fmt)
        return 0

    _guard(fmt is Format.json, body)


@app.command("force-unlock")
def force_unlock_cmd(
    lock_id: Annotated[str, typer.Argument(help="The lock id the error named.")],
    state_dir: StateDirOpt = Path("state"),
) -> None:
    """Remove a lock left behind by a run that died."""

    def body() -> int:
        from ztplan.errors import ZtplanError
        from ztplan.lock import force_unlock, read_lock

        for path in sorted(state_dir.glob("*.lock")):
            holder = read_lock(path)
            if holder is not None and holder.id == lock_id:
                removed = force_unlock(path, lock_id)
                print(
                    f"Removed {path} (held by pid {removed.pid} on {removed.host}, "
                    f"{removed.operation} since {removed.created})."
                )
                return 0
        raise ZtplanError(f"{state_dir}: no lock with id {lock_id}")

    _guard(False, body)


@sandbox_app.command("up")
def sandbox_up() -> None:
    """Create the ztplan-sandbox namespace (WAN eth0, ZeroTier-like zt0)."""

    def body() -> int:
        from ztplan.sandbox import sandbox_up as up

        print(up())
        return 0

    _guard(False, body)


@sandbox_app.command("env")
def sandbox_env_cmd() -> None:
    """Print the shell lines that point ztplan at the sandbox's controller emulator."""

    def body() -> int:
        from ztplan.sandbox import sandbox_env

        print(sandbox_env())
        return 0

    _guard(False, body)


@sandbox_app.command("down")
def sandbox_down() -> None:
    """Delete the sandbox namespaces."""

    def body() -> int:
        from ztplan.sandbox import sandbox_down as down

        print(down())
        return 0

    _guard(False, body)


@sandbox_app.command("status")
def sandbox_status() -> None:
    """Say whether the sandbox exists, with its interfaces and addresses."""

    def body() -> int:
        from ztplan.sandbox import sandbox_status as status

        text, up = status()
        print(text)
        return 0 if up else 1

    _guard(False, body)


def main() -> None:
    """The `ztplan` entry point.

    A plan of a large firewall makes ~100,000 objects. The garbage collector would scan
    them again and again while they are built, and the interpreter would free them one by
    one at exit; neither is needed in a process that ends when the command does. So: a
    high collection threshold, and a quick exit once output is flushed and exit handlers
    (the HTTP client's close) have run.
    """
    import atexit
    import gc

    gc.set_threshold(100_000, 50, 50)
    code = 0
    try:
        app(standalone_mode=True)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)
