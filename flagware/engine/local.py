"""The embedded engine: the TOML spec, compiled to a DCS document, evaluated offline."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from statsig.statsig_options import StatsigOptions

from flagware.engine.base import Engine
from flagware.engine.legacy import LegacySDK
from flagware.spec import Spec, compile_dcs, load_spec

log = logging.getLogger("flagware")

RELOAD_CHECK_INTERVAL = 1.0  # seconds between looks at the spec file's mtime
LOCAL_SDK_KEY = "secret-flagware-local"  # never sent anywhere: both SDKs want a key


def _not_local_mode_chatter(record: logging.LogRecord) -> bool:
    # In local mode the SDK warns "Local mode is enabled. Not fetching ..." for
    # every background task it skips; offline is the point here, not news.
    return not str(record.msg).startswith("Local mode is enabled")


logging.getLogger("statsig.sdk").addFilter(_not_local_mode_chatter)


class LocalSpec(Engine):
    """Gates and experiments from a local spec file, whichever SDK evaluates them.

    Gates can change at any time, so the spec file is re-read when it changes
    (checked at most once a second); a broken edit keeps the last good spec and
    is logged, never raised into a request.
    """

    kind = "local"

    def __init__(
        self,
        spec_path: str | os.PathLike[str],
        *,
        tier: str | None = None,
        check: Callable[[Spec], None] | None = None,  # raises SpecError to refuse a spec
    ) -> None:
        super().__init__()
        self.path = Path(spec_path)
        self.tier = tier
        self.check = check
        self.spec: Spec = load_spec(self.path)  # errors surface at start-up, not per request
        if check is not None:
            check(self.spec)
        self._mtime = self._stat()
        self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL
        self._reload_lock = threading.Lock()

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

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
            mtime = self._stat()
            if mtime == self._mtime:
                return
            self._mtime = mtime
            try:
                spec = load_spec(self.path)
                if self.check is not None:
                    self.check(spec)
            except Exception as exc:
                log.error("flagware: keeping the previous spec: %s", exc)
                return
            self.spec = spec
            self._replace_server()  # the next call starts a server on the new spec
            log.info("flagware: reloaded %s", self.path)
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
