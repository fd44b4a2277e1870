"""The engine between the command line and the work: `open_run(options) -> Run`.

A run is opened once: it reads the spec (a file, a git commit or a saved plan), builds the
host and the providers with their I/O, and reads the state. `Run.plan()`, `Run.apply()`,
`Run.drift()` return models that `ztplan.render` turns into text; the CLI maps options to
a run and results to exit codes. This is the only module that takes the target's lock
and builds a `LocalHost`.

    cli  ->  run  ->  plan / apply / revert / importer  ->  providers  ->  host, api, state, ...
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ztplan.apply import Reporter
from ztplan.errors import LockHeld, ZtplanError
from ztplan.host import Host, LocalHost
from ztplan.model import (
    ApplyOutcome,
    DriftReport,
    Finding,
    Plan,
    PlanContext,
    Snapshot,
    SpecSource,
    Verification,
)
from ztplan.providers import Provider, Wiring, build_providers
from ztplan.spec import Spec
from ztplan.state import StateFile, read_state

__all__ = [
    "Cancelled",
    "Options",
    "Run",
    "confirm_apply",
    "force_unlock",
    "import_host",
    "local_host",
    "open_run",
    "revert_at_deadline",
    "state_dir_flag",
    "validate_spec",
]


def state_dir_flag(state_dir: Path) -> str:
    """What a suggested command adds for this state dir (nothing for the default)."""
    return "" if state_dir == Path("state") else f" --state-dir {state_dir}"


class Cancelled(ZtplanError):
    """The operator said no at the prompt: nothing was changed."""


@dataclass(frozen=True)
class Options:
    """What a command line (or a test) asks of a run."""

    spec: str | None = None
    """The spec file; for apply also a plan saved with `plan -o` (*.json)."""
    repo: str | None = None
    ref: str | None = None
    fetch: bool = False
    netns: str | None = None
    state_dir: Path = Path("state")
    root: Path = Path("/")
    targets: tuple[str, ...] = ()
    lock_timeout: float = 0.0
    verify: bool = True
    """Prove the gateway's flows with real packets through a twin (ztplan.verify)."""
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def local_host(netns: str | None) -> LocalHost:
    """The host a run acts on: this machine, or one of its network namespaces."""
    return LocalHost(netns)


@dataclass
class Run:
    options: Options
    spec: Spec
    source: SpecSource
    host: LocalHost
    providers: list[Provider]
    context: PlanContext
    saved: Plan | None = None
    """The saved plan being applied, if any."""
    _claimed: tuple[object, dict[str, str]] | None = field(default=None, repr=False)
    """The claims of the last plan's desired values, and those values (one scan of
    100,000 addresses for the conflict check and the state)."""

    @property
    def state_dir(self) -> Path:
        return self.options.state_dir

    @property
    def target(self) -> str:
        return self.spec.target.name

    @property
    def controller_url(self) -> str | None:
        for provider in self.providers:
            api = getattr(provider, "api", None)
            if provider.name == "controller" and api is not None:
                return str(api.base_url)
        return None

    # --- the lock, the state, the notes --------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, operation: str, timeout: float | None = None) -> Iterator[None]:
        """The target's lock for the block. A run that only reads (plan -o, drift, verify)
        goes on without it when it is stale (its holder is dead): nothing is written, and
        the plan's notes say the lock is stale; apply refuses until it is removed."""
        from ztplan.lock import lock_path, locked

        wait = self.options.lock_timeout if timeout is None else timeout
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(locked(lock_path(self.state_dir, self.target), operation, wait))
            except LockHeld as held:
                if not held.stale or operation == "apply":
                    raise
            yield

    def _previous(self) -> StateFile | None:
        """The target's state, checked whole; its resources (which neither a plan nor a
        whole apply reads) are not kept."""
        return read_state(self.state_dir, self.target, resources=False)

    def _notes(self) -> list[Finding]:
        """What earlier runs left: an unfinished or unconfirmed apply, a reverted one, a
        stale lock."""
        from ztplan.journal import journal_path, read_journal
        from ztplan.lock import lock_path, pid_alive, read_lock
        from ztplan.revert import read_outcome

        notes: list[Finding] = []
        journal = read_journal(journal_path(self.state_dir, self.target))
        if (
            journal is not None
            and journal.confirm_by is not None
            and journal.outcome is None  # "failed": it never reached its window
            and journal.confirm_by > time.time()
        ):
            left = int(journal.confirm_by - time.time())
            notes.append(
                Finding(
                    severity="warning",
                    address="apply.unconfirmed",
                    message=f"the last apply is not confirmed: it is reverted in {left} s "
                    f"unless `ztplan confirm --target-name {self.target}` comes first",
                )
            )
        elif journal is not None and not pid_alive(journal.pid, journal.host):
            notes.append(
                Finding(
                    severity="warning",
                    address="apply.interrupted",
                    message=journal.summary() + "; this plan is made from the live state as it is",
                )
            )
        reverted = read_outcome(self.state_dir, self.target)
        if reverted is not None:
            notes.append(
                Finding(
                    severity="warning",
                    address="apply.reverted",
                    message=f"the last apply was not confirmed and was reverted at "
                    f"{reverted.get('at')}: {reverted.get('outcome')}",
                )
            )
        lock = lock_path(self.state_dir, self.target)
        holder = read_lock(lock)
        if holder is not None and not pid_alive(holder.pid, holder.host):
            notes.append(
                Finding(
                    severity="warning",
                    address="lock",
                    message=f"{lock} is stale (left by pid {holder.pid} on {holder.host}, "
                    f"{holder.operation} since {holder.created}): apply will refuse until it "
                    f"is removed with `ztplan force-unlock {holder.id}"
                    + state_dir_flag(self.state_dir)
                    + "`",
                )
            )
        return notes

    def _conflicts(self, plan: Plan, previous: StateFile | None) -> list[Finding]:
        """What this target would hold that another target on the same host holds
        differently (state records each target's claims): a plan error naming both.
        `previous` is this target's state, read already (not parsed again)."""
        from ztplan.state import read_states, state_path

        mine = self._claims(plan)
        findings = []
        read = {state_path(self.state_dir, self.target): previous}
        for other in read_states(self.state_dir, read, resources=False):
            if other.target == self.target or other.netns != self.host.netns:
                continue
            for key, theirs in other.claims.items():
                wanted = mine.get(key)
                if wanted is None or (wanted == theirs and key != "ndppd.config"):
                    continue
                what = f"also writes {theirs}" if key == "ndppd.config" else f"holds {theirs!r}"
                findings.append(
                    Finding(
                        severity="error",
                        address=key,
                        message=f"{self.source.path} wants {key} = {wanted!r}, but target "
                        f"{other.target} (from {other.spec.path}) {what} on this host; one "
                        "target owns each policy, sysctl key and ndppd file",
                    )
                )
        return findings

    def _claims(self, plan: Plan) -> dict[str, str]:
        if self._claimed is None or self._claimed[0] is not plan.desired:
            from ztplan.apply import claims_of

            self._claimed = (plan.desired, claims_of(plan.desired, self._ndppd_config()))
        return self._claimed[1]

    def _ndppd_config(self) -> str | None:
        if self.spec.ndppd is None:
            return None
        return self.host.config_path(self.spec.ndppd.config)

    def _make_plan(
        self, notes: Sequence[Finding], previous: StateFile | None
    ) -> tuple[Plan, dict[str, Snapshot]]:
        from ztplan.plan import make_plan

        plan, snapshots = make_plan(
            self.spec,
            self.source,
            self.host,
            self.providers,
            previous,
            notes,
            self.options.targets,
            self.context,
            self.controller_url,
        )
        conflicts = self._conflicts(plan, previous)
        if conflicts:
            plan = plan.model_copy(update={"findings": [*plan.findings, *conflicts]})
        return plan, snapshots

    # --- verification -------------------------------------------------------------------

    def _wants_verification(self, plan: Plan) -> bool:
        """A spec with flows, or a plan that changes what decides the packet path (the
        lock-out check): verified unless --no-verify. Nothing else pays for a twin."""
        if not self.options.verify:
            return False
        changes = any(c.provider in ("firewall", "sysctl") for c in plan.changes)
        return self.spec._shorthand is not None or self.spec.verify is not None or changes

    def _verified(self, plan: Plan, snapshots: Mapping[str, Snapshot]) -> Plan:
        """The plan with its verification: each flow on the live state and, if the plan
        changes the firewall or sysctls, on the state it makes (the providers make those
        changes in the twin), and the field warnings the live host shows."""
        if not self._wants_verification(plan) or plan.errors:
            return plan  # a plan with errors is not applied: nothing to prove of it
        from ztplan.apply import plan_steps
        from ztplan.verify import field_warnings, verify_spec

        by_name = {p.name: p for p in self.providers}
        steps = [s for s in plan_steps(plan.changes) if s.provider in ("firewall", "sysctl")]

        def prepare(twin: Host) -> None:
            for step in steps:
                by_name[step.provider].apply(twin, step.changes, snapshots[step.provider])

        verification, image = verify_spec(self.spec, self.host, prepare if steps else None)
        findings = list(plan.findings)
        forwarding = any(k.endswith(("ip_forward", "forwarding")) for k in self.spec.sysctl)
        if image is not None:
            findings += field_warnings(image, forwarding or self.spec._shorthand is not None)
        for check in verification.flows:
            verdict = check.after if check.after is not None else check.now
            if verdict is not None and not verdict.ok and not check.cut:
                when = "after this plan" if check.after is not None else "now"
                findings.append(
                    Finding(
                        severity="warning",
                        address=f"verify.{check.name}",
                        message=f"{check.name} ({check.kind} {check.family} "
                        f"{check.protocol}/{check.port}) should "
                        f"{'pass' if check.expect == 'pass' else 'be blocked'} but does not "
                        f"{when}: {verdict.observed}"
                        + (f"; {verdict.culprit}" if verdict.culprit else ""),
                    )
                )
        for check in verification.lockouts:
            culprit = check.after.culprit if check.after else None
            findings.append(
                Finding(
                    severity="warning",
                    address=f"verify.{check.name}",
                    message=f"this plan cuts {check.protocol} port {check.port} ({check.family}) "
                    "from the WAN side, reachable now"
                    + (f": {culprit}" if culprit else "")
                    + "; apply refuses it unless --allow-lockout",
                )
            )
        return plan.model_copy(update={"verification": verification, "findings": findings})

    def verify(self, lock_timeout: float = 60.0) -> Verification:
        """`ztplan verify`: the flows on the live state (the lock held while it reads)."""
        from ztplan.verify import verify_spec

        with self._locked("verify", lock_timeout):
            verification, _ = verify_spec(self.spec, self.host)
        return verification

    # --- the commands -------------------------------------------------------------------

    def plan(self, out: Path | None = None) -> Plan:
        """The plan; with `out`, also saved there (under the lock, so it is current)."""
        guard = self._locked("plan") if out else contextlib.nullcontext()
        with guard:
            plan, snapshots = self._make_plan(self._notes(), self._previous())
            plan = self._verified(plan, snapshots)
            if out is not None:
                from ztplan.state import write_atomic

                write_atomic(out, plan.model_dump_json(indent=2) + "\n", mode=0o600)
        return plan

    def apply(
        self,
        *,
        approve: Callable[[Plan], bool] | None,
        reporter: Reporter,
        shown: Callable[[Plan], None] = lambda plan: None,
        confirm_within: float = 0.0,
        allow_non_descendant: bool = False,
        require_signed: bool = False,
        allow_lockout: bool = False,
        stop: Callable[[], bool] = lambda: False,
    ) -> ApplyOutcome:
        """Plan under the lock, show it (`shown`), ask (`approve`: not asked for a saved
        plan), apply, write state; with `confirm_within`, arm the reverter.

        `approve` None: approved beforehand (--auto-approve). Nothing then waits between
        the read and the apply, so the plan's snapshots, read under this lock, are used as
        they are; after a question, the host is read again (the answer may take minutes)."""
        from ztplan.apply import apply_plan, refuse_if_stale, refuse_stale_saved_plan

        with self._locked("apply"):
            previous = self._previous()
            self._check_commit(previous, allow_non_descendant, require_signed)
            notes = self._notes()
            plan, snapshots = self._make_plan(notes, previous)
            if self.saved is not None:
                refuse_stale_saved_plan(str(self.options.spec), self.saved, plan, previous)
                plan = self.saved  # the reviewed changes, against the same live state
            plan = self._verified(plan, snapshots)
            shown(plan)
            lockouts = plan.verification.lockouts if plan.verification else []
            if lockouts and not allow_lockout:
                ports = ", ".join(f"{c.protocol}/{c.port} ({c.family})" for c in lockouts)
                culprit = next((c.after.culprit for c in lockouts if c.after), None)
                raise ZtplanError(
                    f"this apply would cut {ports} from the WAN side, reachable now"
                    + (f" ({culprit})" if culprit else "")
                    + "; nothing was applied",
                    "allow it in the spec first, or pass --allow-lockout to apply anyway",
                )
            if plan.errors:
                raise ZtplanError(
                    f"the plan has {len(plan.errors)} error(s); nothing was applied: "
                    f"{plan.errors[0].message}"
                )
            interrupted = any(n.address == "apply.interrupted" for n in notes)
            if not plan.has_changes and not interrupted:
                return ApplyOutcome(target=self.target, applied=True, counts=plan.counts)
            if plan.has_changes and self.saved is None and approve is not None:
                if not approve(plan):
                    raise Cancelled("Apply cancelled; nothing was changed.")
                # Time may have passed while asking: apply only what was approved.
                snapshots = refuse_if_stale(plan, self.host, self.providers)
            confirm_by = time.time() + confirm_within if confirm_within > 0 else None
            result = apply_plan(
                plan,
                snapshots,
                self.host,
                self.providers,
                reporter,
                self.state_dir,
                previous,
                spec_text=self.spec._text,
                root=str(self.options.root),
                confirm_by=confirm_by,
                claims=self._claims(plan),
                stop=stop,
            )
            from ztplan.revert import arm_reverter, clear_outcome

            clear_outcome(self.state_dir, self.target)
            if confirm_by is not None:
                arm_reverter(self.state_dir, self.target, result.journal, self._reverter_env())
        return ApplyOutcome(
            target=self.target,
            applied=True,
            steps=result.steps,
            serial=result.state.serial,
            confirm_by=confirm_by,
            counts=plan.counts,
        )

    def _reverter_env(self) -> dict[str, str]:
        from ztplan.revert import reverter_env

        names = [
            name
            for name in (
                self.spec.controller.token_env if self.spec.controller else None,
                self.spec.member.token_env if self.spec.member else None,
            )
            if name
        ]
        return reverter_env(names, self.options.env)

    def _check_commit(
        self, previous: StateFile | None, allow_non_descendant: bool, require_signed: bool
    ) -> None:
        if self.source.repo is not None:
            from ztplan.source import check_commit, resolve_repo

            check_commit(
                self.source,
                resolve_repo(self.source.repo, self.state_dir / "cache"),
                previous.spec.commit if previous else None,
                allow_non_descendant,
                require_signed,
            )
        elif require_signed:
            raise ZtplanError(f"{self.source.path}: --require-signed needs --repo and --ref")

    def drift(self, lock_timeout: float = 60.0) -> DriftReport:
        """A plan for cron and CI; holds the lock only while it reads (waiting for a
        running apply up to `lock_timeout`). Flows are verified on the live state only."""
        checked_at = time.time()
        with self._locked("drift", lock_timeout):
            plan, snapshots = self._make_plan(self._notes(), self._previous())
            no_changes = plan.model_copy(update={"changes": []})
            verified = self._verified(no_changes, snapshots)  # flows only: nothing changes
            plan = plan.model_copy(
                update={"verification": verified.verification, "findings": verified.findings}
            )
        return DriftReport(target=self.target, checked_at=checked_at, plan=plan)

    def previous(self) -> StateFile | None:
        return self._previous()


def _read(options: Options) -> tuple[Spec, SpecSource, Plan | None]:
    from ztplan.apply import load_plan
    from ztplan.source import read_spec
    from ztplan.spec import parse_spec

    if options.spec and options.spec.endswith(".json"):
        saved = load_plan(Path(options.spec))
        if options.netns is not None and options.netns != saved.netns:
            raise ZtplanError(
                f"{options.spec}: the plan is for netns {saved.netns}, not {options.netns}"
            )
        return parse_spec(saved.spec_text or "", saved.spec.path), saved.spec, saved
    spec, source = read_spec(
        options.spec,
        options.repo,
        options.ref,
        cache_dir=options.state_dir / "cache",
        fetch=options.fetch,
    )
    return spec, source, None


def open_run(options: Options) -> Run:
    """Read the spec, build the host and the providers. Nothing is locked or written yet."""
    return _build(options, *_read(options))


def _build(options: Options, spec: Spec, source: SpecSource, saved: Plan | None) -> Run:
    netns = saved.netns if saved is not None else options.netns
    host = local_host(netns)
    context = PlanContext()
    wiring = Wiring(
        file=source.path,
        cache_dir=options.state_dir / "cache",
        netns=netns,
        root=options.root,
        context=context,
        env=options.env,
    )
    providers = build_providers(spec, wiring)
    return Run(options, spec, source, host, providers, context, saved)


# --- commands that need no whole run ---------------------------------------------------


def validate_spec(options: Options) -> tuple[Spec, SpecSource, list[Finding]]:
    """The spec and what can be known of it without the live host: the cross-provider
    checks, ndppd's own and (as root, in a scratch namespace) whether the kernel takes
    every rule."""
    from ztplan.checks import check_spec
    from ztplan.source import read_spec

    spec, source = read_spec(options.spec, options.repo, options.ref)
    findings = list(check_spec(spec, None, source.path))
    if spec.ndppd is not None:
        from ztplan.providers.ndppd import Ndppd

        findings += Ndppd().check(spec, Snapshot(resources={}, raw={}))
    if spec.firewall is not None and os.geteuid() == 0:
        from ztplan.normalise import KernelNormaliser
        from ztplan.providers.firewall import Firewall, Layout

        Firewall(Layout.of(spec), normalise=KernelNormaliser(), file=source.path).desired(spec)
    return spec, source, findings


def confirm_apply(state_dir: Path, target: str | None) -> str:
    """Keep an apply made with --confirm-within; the target confirmed."""
    from ztplan.revert import confirm

    names = (
        [target]
        if target
        else sorted(p.name.removesuffix(".journal.json") for p in state_dir.glob("*.journal.json"))
        or sorted(p.name.removesuffix(".reverted.json") for p in state_dir.glob("*.reverted.json"))
    )
    if len(names) != 1:
        raise ZtplanError(
            f"{state_dir}: {'no apply is' if not names else 'several applies are'} "
            "waiting for confirmation",
            "name one with --target-name" if names else None,
        )
    confirm(state_dir, names[0])
    return names[0]


def revert_at_deadline(state_dir: Path, target: str, journal_id: str) -> str:
    """The detached reverter: wait for the deadline, then undo the apply unless confirmed.
    It owns the target while its window is open: a lock left by a dead run (or half
    written) does not stop it; a live holder is waited for."""
    from ztplan.journal import journal_path, log_event, read_journal, remove_journal
    from ztplan.lock import force_unlock as unlock
    from ztplan.lock import lock_path, locked
    from ztplan.revert import record_outcome, revert
    from ztplan.spec import parse_spec

    path = journal_path(state_dir, target)
    journal = read_journal(path)
    if journal is None or journal.id != journal_id or journal.confirm_by is None:
        return "nothing to revert"
    while (left := journal.confirm_by - time.time()) > 0:
        time.sleep(min(left, 1.0))
        current = read_journal(path)
        if current is None or current.id != journal_id:
            return "confirmed in time"
    with contextlib.ExitStack() as stack:
        lock = lock_path(state_dir, target)
        for _ in range(3):
            try:
                stack.enter_context(locked(lock, "revert", timeout=600))
                break
            except LockHeld as held:
                if not held.stale:
                    raise
                unlock(lock, held.info.id)  # the window is the reverter's: a dead run's lock goes
        else:
            raise ZtplanError(f"{lock}: cannot take the lock to revert")
        current = read_journal(path)
        if current is None or current.id != journal_id:
            return "confirmed in time"
        spec = parse_spec(current.spec_text, current.spec_file)
        wiring = Wiring(file=current.spec_file, netns=current.netns, root=Path(current.root))
        providers = {p.name: p for p in build_providers(spec, wiring)}
        reverted, failed = revert(state_dir, current, local_host(current.netns), providers)
        outcome = f"reverted: {', '.join(reverted) or 'nothing'}" + (
            f"; FAILED: {', '.join(failed)}" if failed else ""
        )
        if failed:
            log_event(path, current, "outcome", outcome)
        else:
            remove_journal(path)
        record_outcome(state_dir, target, current, outcome)
        return outcome


def force_unlock(state_dir: Path, lock_id: str) -> tuple[Path, str]:
    """Remove the lock with this id, whoever holds it; (its path, whose it was)."""
    from ztplan.lock import force_unlock as unlock
    from ztplan.lock import read_lock

    for path in sorted(state_dir.glob("*.lock")):
        holder = read_lock(path)
        if holder is not None and holder.id == lock_id:
            info = unlock(path, lock_id)
            return path, (f"pid {info.pid} on {info.host}, {info.operation} since {info.created}")
    raise ZtplanError(f"{state_dir}: no lock with id {lock_id}")


def import_host(
    *,
    netns: str | None,
    target_name: str | None,
    networks: Sequence[str],
    controller: Mapping[str, str] | None,
    ndppd_config: str,
    ndppd_pidfile: str | None,
    adopt: bool,
    state_dir: Path,
    lock_timeout: float,
    env: Mapping[str, str] | None = None,
) -> tuple[str, int, int]:
    """The spec of a gateway configured by hand; with `adopt`, its rules moved into the
    target's own chains. (spec text, rules adopted, problems its header asks to fix)."""
    import socket

    from pydantic import ValidationError

    from ztplan.importer import adopt_rules, import_spec, problems_of
    from ztplan.spec import Controller, parse_spec

    host = local_host(netns)
    name = target_name or netns or socket.gethostname().split(".")[0]
    spec_controller, api = None, None
    if controller is not None:
        try:
            spec_controller = Controller.model_validate({k: v for k, v in controller.items() if v})
        except ValidationError as error:
            raise ZtplanError(f"--controller-*: {error.errors()[0]['msg']}") from None
    if networks:
        if spec_controller is None:
            raise ZtplanError("--network needs --controller-kind (central, central-v2 or local)")
        from ztplan.api import shared_client
        from ztplan.providers import CONTROLLER_URL_ENV
        from ztplan.providers.controller import controller_client

        bare = Spec.model_validate(
            {"version": 1, "target": {"name": name}, "controller": spec_controller.model_dump()}
        )
        api = controller_client(bare, shared_client(), (env or os.environ).get(CONTROLLER_URL_ENV))

    def read(networks: Sequence[str] = networks) -> str:
        return import_spec(
            host,
            target=name,
            networks=networks,
            controller=spec_controller,
            api=api,
            ndppd_config=ndppd_config,
            ndppd_pidfile=ndppd_pidfile,
        )

    text = read()
    adopted = 0
    if adopt:
        from ztplan.lock import lock_path, locked
        from ztplan.normalise import KernelNormaliser

        with locked(lock_path(state_dir, name), "import", lock_timeout):
            # Only the rules are adopted: a network the controller holds in a shape ztplan
            # refuses (named in the header) does not stop it.
            spec = parse_spec(read(networks=()), "imported spec")
            adopted = len(adopt_rules(host, spec, KernelNormaliser(cache_dir=state_dir / "cache")))
            text = read()  # again: the header no longer counts them as not ztplan's
    return text, adopted, len(problems_of(text))


def check_drift(options: Options, lock_timeout: float) -> tuple[DriftReport, StateFile | None]:
    """`drift`: the report, even when the check itself fails (for the metrics file); and
    the last applied state, if any."""
    checked_at = time.time()
    target = "unknown"
    try:
        read = _read(options)
        target = read[0].target.name
        run = _build(options, *read)
        return run.drift(lock_timeout), run.previous()
    except ZtplanError as error:
        return DriftReport(target=target, checked_at=checked_at, error=str(error)), None


def read_plan(path: Path) -> Plan:
    """A saved plan, for `show`."""
    from ztplan.apply import read_plan as read

    return read(path)


def recorded_states(state_dir: Path, target: str | None) -> list[StateFile]:
    """What the applies recorded, for `show --state` (one target, or all)."""
    from ztplan.state import read_states

    if target is not None:
        state = read_state(state_dir, target)
        if state is None:
            raise ZtplanError(f"{state_dir}: no state recorded for {target}")
        return [state]
    states = read_states(state_dir)
    if not states:
        raise ZtplanError(f"{state_dir}: no state recorded yet")
    return states


def expanded(spec: Spec, as_json: bool) -> str:
    """The spec with the gateway shorthand written out (`validate --expand`)."""
    import json

    from ztplan.gateway import dump_data, dump_spec

    return json.dumps(dump_data(spec), indent=2) + "\n" if as_json else dump_spec(spec)


def schema_text() -> str:
    import json

    from ztplan.schema import spec_schema

    return json.dumps(spec_schema(), indent=2) + "\n"


def write_output(path: Path, text: str) -> None:
    from ztplan.state import write_atomic

    write_atomic(path, text)
