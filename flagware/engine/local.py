"""The embedded engine: the TOML spec, compiled to a DCS document, evaluated offline."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from statsig.statsig_options import StatsigOptions

from flagware.engine.base import Engine, Evaluation
from flagware.engine.legacy import LegacySDK
from flagware.spec import Spec, compile_dcs, did_you_mean, load_spec
from flagware.spec.diff import differences
from flagware.visitors import forget_repeats

log = logging.getLogger("flagware")

RELOAD_CHECK_INTERVAL = 1.0  # seconds between looks at the spec file's times
# A spec refused for what the store holds (a started experiment changed) is
# looked at again this often: `flagware reset` or another host's restart can
# make it acceptable without the file changing again.
REFUSED_RETRY_INTERVAL = 5.0
LOCAL_SDK_KEY = "secret-flagware-local"  # never sent anywhere: both SDKs want a key


def _not_local_mode_chatter(record: logging.LogRecord) -> bool:
    # In local mode the SDK warns "Local mode is enabled. Not fetching ..." for
    # every background task it skips; offline is the point here, not news.
    return not str(record.msg).startswith("Local mode is enabled")


logging.getLogger("statsig.sdk").addFilter(_not_local_mode_chatter)


def spec_changes(old: Spec, new: Spec) -> str:
    """What a reload changed ("gates.beta added; gates.checkout changed (rollout
    changed from 10 to 50)"): the log line an operator reads to see that the
    edit took, and what a process took when it switched to a start record."""
    said: list[str] = []
    for kind in ("gates", "experiments", "metrics"):
        before, after = getattr(old, kind), getattr(new, kind)
        for name in after:
            if name not in before:
                said.append(f"{kind}.{name} added")
            elif after[name] != before[name]:
                said.append(f"{kind}.{name} changed{_how(before[name], after[name])}")
        said += [f"{kind}.{name} removed" for name in before if name not in after]
    return "; ".join(said) or "no gate, experiment or metric changed"


def _how(before: Any, after: Any, shown: int = 3) -> str:
    def fields(item: Any) -> Any:  # JSON-shaped: tuples as lists, as the start records
        return json.loads(json.dumps(dataclasses.asdict(item), default=str))

    found = list(differences(fields(before), fields(after)))
    more = f", and {len(found) - shown} more" if len(found) > shown else ""
    return f" ({', '.join(found[:shown])}{more})" if found else ""


def narrowed_targeting(old: Spec, new: Spec) -> list[str]:
    """A warning for each gate whose edit may take units out of an
    experiment it targets: a lower rollout, a disabled gate, other conditions,
    salt or unit. A gate is yours to change at any time, so this is said, not
    refused; but units that fail it leave their groups for the defaults
    (an operator's trial: 51 of 74 returning units, said nowhere)."""
    said = []
    for name, gate in new.gates.items():
        before = old.gates.get(name)
        targets = sorted(e.name for e in new.experiments.values() if e.targeting_gate == name)
        if before is None or not targets:
            continue
        how = []
        if gate.rollout < before.rollout:
            how.append(f"rollout lowered from {before.rollout:g} to {gate.rollout:g}")
        if before.enabled and not gate.enabled:
            how.append("disabled")
        if gate.conditions != before.conditions and gate.conditions:
            how.append("its conditions changed")
        if (gate.salt, gate.unit) != (before.salt, before.unit) and gate.rollout < 100:
            how.append("its salt or unit changed")
        if how:
            experiments = ", ".join(f"experiments.{e}" for e in targets)
            said.append(
                f"gates.{name} ({', '.join(how)}) is the targeting gate of {experiments}: units"
                " that fail it now leave their groups and are served the defaults, while"
                " results count them in the groups they had; widen it back, or restart or"
                " rename the experiment"
            )
    return said


def _served_experiments(spec: Spec) -> dict[str, Any]:
    """The experiments a spec serves: all of each but ``restart``, which only
    opens a results window."""
    return {n: replace(e, restart=False) for n, e in spec.experiments.items()}


class LocalSpec(Engine):
    """Gates and experiments from a local spec file, whichever SDK evaluates them.

    Gates can change at any time, so the spec file is re-read when it changes
    (checked at most once a second); a broken edit keeps the last good spec and
    is logged, never raised into a request. A started experiment that the file
    changed is served as it started, and the rest of the edit taken.
    """

    kind = "local"

    def __init__(
        self,
        spec_path: str | os.PathLike[str],
        *,
        tier: str | None = None,
        # The spec to serve and the refused edits of started experiments
        # (flagware.starts); raises SpecError to refuse the whole spec.
        check: Callable[[Spec], tuple[Spec, list[str]]] | None = None,
        on_reload: Callable[[Spec], None] | None = None,  # after a new spec is in use
    ) -> None:
        super().__init__()
        self.path = Path(spec_path)
        self.tier = tier
        self.check = check
        self.on_reload = on_reload
        self._retry_at: float | None = None  # when to look again at a refused spec
        self._adopt = False  # the next look adopts a start record another process wrote
        self._broken = False  # "keeping the previous spec" was said for the file as it is
        self.spec: Spec = load_spec(self.path)  # errors surface at start-up, not per request
        # Edits of started experiments this process refused: it serves them as
        # they started. A start-up that raised instead took every worker down
        # in a loop, gates and all (a new user's trial).
        self.refused: list[str] = []
        if check is not None:
            self.spec, self.refused = check(self.spec)
            self._say_refused()
        self._mtime = self._stat()
        self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL
        if self.refused:
            self._retry_at = time.monotonic() + REFUSED_RETRY_INTERVAL
        self._reload_lock = threading.Lock()
        # Names read in code that the spec does not define (a typo, or a flag
        # removed from the spec): counted on every read, logged once per name.
        self.unknown_names: Counter[str] = Counter()

    def gate(self, user: Any, name: str) -> Evaluation:
        if name not in self.spec.gates:
            self._unknown("gate", name, "it is False for everyone")
        return super().gate(user, name)

    def config(self, user: Any, name: str) -> Evaluation:
        if name not in self.spec.experiments:
            self._unknown("experiment", name, "everyone gets empty params")
        return super().config(user, name)

    def _unknown(self, kind: str, name: str, outcome: str) -> None:
        self.unknown_names[name] += 1
        if self.unknown_names[name] > 1:
            return
        spec = self.spec
        if kind == "gate" and name in spec.experiments:
            hint = f" (it is an experiment: read it with flags.experiment({name!r}))"
        elif kind == "experiment" and name in spec.gates:
            hint = f" (it is a gate: read it with flags.gate({name!r}))"
        else:
            hint = did_you_mean(name, spec.gates if kind == "gate" else spec.experiments)
        log.warning(
            "flagware: %s %r is not defined in the spec %s%s; %s",
            kind,
            name,
            spec.source,
            hint,
            outcome,
        )

    def look_again(self) -> None:
        """Compare the spec with the start records at the next reload check
        (another process recorded a start this one does not serve)."""
        self._adopt = True
        self._retry_at = time.monotonic()

    def _say_refused(self) -> None:
        for message in self.refused:
            # Each message says how it is served meanwhile: an edit as it
            # started, a moved ship as shipped (a trial read "as it started").
            log.error("flagware: %s: %s", self.path, message)

    def _stat(self) -> tuple[int, ...]:
        """What tells an edit: the modification time alone missed a file
        replaced by one with its old time kept (``cp -p``, ``touch -r``, a
        deploy tool preserving times: a new user's trial). The change time,
        which no copy can set, and the size and inode catch those."""
        try:
            st = self.path.stat()
        except OSError:
            return ()
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def server(self) -> Any:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_CHECK_INTERVAL
            self._maybe_reload()
        return super().server()

    def names(self) -> tuple[list[str], list[str]]:
        return list(self.spec.gates), list(self.spec.experiments)

    def experiment_groups(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            name: {g.name: dict(g.params) for g in exp.groups}
            for name, exp in self.spec.experiments.items()
        }

    def _maybe_reload(self) -> None:
        if not self._reload_lock.acquire(blocking=False):
            return
        try:
            mtime, now = self._stat(), time.monotonic()
            changed = mtime != self._mtime
            # Asked by Starts.verify, which said what differs and what to do:
            # the usual refusal ("set restart = true") would restart the
            # experiment again with this host's stale definition, and
            # "reloaded <file>" named a file nobody edited (a new user's trial).
            adopting, self._adopt = self._adopt and not changed, False
            if not changed and (self._retry_at is None or now < self._retry_at):
                return
            self._mtime, self._retry_at = mtime, None
            try:
                spec = load_spec(self.path)
            except Exception as exc:
                self._broken = True
                log.error("flagware: keeping the previous spec: %s", exc)
                return
            try:
                spec, refused = self.check(spec) if self.check is not None else (spec, [])
            except Exception as exc:
                self._retry_at = now + REFUSED_RETRY_INTERVAL
                if changed:  # said once per edit, however often it is looked at again
                    self._broken = True
                    log.error("flagware: keeping the previous spec: %s", exc)
                return
            # A mended file that serves what was served: its error was the last
            # word in the log, so an operator could not tell it was mended (a trial).
            if self._broken and spec == self.spec and not refused:
                log.info("flagware: %s is valid again (nothing served changed)", self.path)
            self._broken = False
            if refused:  # `flagware reset` or a restart elsewhere may make it acceptable
                self._retry_at = now + REFUSED_RETRY_INTERVAL
            said, self.refused = self.refused, refused
            if refused and (changed or refused != said) and not adopting:
                self._say_refused()
            elif said and not refused:  # its refusal was said: so is its end (a trial)
                log.info(
                    "flagware: %s: it changes no started experiment now: nothing refused", self.path
                )
            if spec == self.spec:  # nothing served changes (a comment, a refused edit)
                return
            previous, self.spec = self.spec, spec
            changes = spec_changes(previous, spec)
            experiments = _served_experiments(spec) != _served_experiments(previous)
            if not experiments and spec.gates == previous.gates:  # metrics, `restart`
                log.info("flagware: re-read %s: %s (nothing served changed)", self.path, changes)
                return
            try:
                self._replace_server()  # a server on the new spec, then the old one stopped
            except Exception as exc:  # the SDK refused the compiled spec
                self.spec, self._broken = previous, True
                log.error("flagware: keeping the previous spec: %s", exc)
                return
            # A changed or restarted experiment: expose everyone anew, even to
            # the group they had, so its new window counts them. (A gate's
            # exposures name the value: a changed one is logged anyway.)
            if experiments:
                from flagware.results.sql import SETTLE_MS  # loaded already: the start check

                # And again once a restart's window opens (its settling
                # seconds): exposures in between were remembered.
                forget_repeats(again_after=SETTLE_MS / 1000)
            if self.on_reload is not None:
                self.on_reload(spec)
            if adopting:
                log.info("flagware: serving the start records' definitions: %s", changes)
            else:
                log.info("flagware: reloaded %s: %s", self.path, changes)
                for warning in narrowed_targeting(previous, spec):
                    log.warning("flagware: %s: %s", self.path, warning)
        finally:
            self._reload_lock.release()


class LocalEngine(LocalSpec, LegacySDK):
    """The local spec evaluated by the legacy SDK in local mode (the default)."""

    def _sdk_key(self) -> str:
        return LOCAL_SDK_KEY

    def _options(self) -> StatsigOptions:
        return StatsigOptions(
            local_mode=True,
            bootstrap_values=json.dumps(compile_dcs(self.spec)),
            disable_all_logging=True,
            disable_diagnostics=True,
            tier=self.tier,
        )
