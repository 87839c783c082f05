"""The Statsig engine: specs downloaded from Statsig by the SDK, evaluated in process."""

from __future__ import annotations

from statsig.statsig_options import StatsigOptions
from statsig.statsig_server import StatsigServer

from flagware.engine import legacy_specs
from flagware.engine.legacy import LegacySDK
from flagware.engine.specs_log import SpecsLog

# Where the legacy SDK downloads specs when given no api (statsig/http_worker.py).
STATSIG_CDN = "https://api.statsigcdn.com/v1"


class StatsigSource:
    """Where the specs come from: Statsig's API (or a proxy), with this secret."""

    kind = "statsig"

    def __init__(
        self,
        secret: str,
        *,
        api: str | None = None,
        init_timeout: float = 3.0,
        tier: str | None = None,
        offline: bool = False,
    ) -> None:
        super().__init__()
        self.secret = secret
        self.api = api
        self.init_timeout = init_timeout
        self.tier = tier
        # Under the test isolation: nothing downloaded, so every gate is False
        # and every experiment its defaults unless forced, on every run and
        # machine, and the secret never leaves a CI runner.
        self.offline = offline


class StatsigEngine(StatsigSource, LegacySDK):
    # This process's downloads (made with its server): a failed one counted in
    # specs.failures, and an outage told in two lines (legacy_specs).
    specs: SpecsLog | None = None
    sync_interval: float = 10  # seconds between the SDK's spec downloads (its default)

    def _sdk_key(self) -> str:
        return self.secret

    def specs_log(self) -> SpecsLog | None:
        return self.specs

    def _new_server(self) -> StatsigServer:
        if self.offline:
            # Nothing is downloaded (the SDK's local mode), so nothing to tell:
            # watched, its first "download" read as one that failed, and the
            # test isolation logged "could not download Statsig specs from
            # https://statsigapi.net..." as if the secret had been used (a
            # new user's trial; strace: no connection).
            return StatsigServer()
        legacy_specs.quiet_repeats()
        base = f"{(self.api or STATSIG_CDN).rstrip('/')}/download_config_specs"
        self.specs = SpecsLog(base, on_recovered=legacy_specs.repeats.rearm)
        return legacy_specs.WatchedServer(self.specs, self.secret)

    def _options(self) -> StatsigOptions:
        return StatsigOptions(
            api=self.api,
            local_mode=self.offline,
            # An unreachable API delays the first request of a process by at
            # most this long; the SDK keeps trying in the background and the
            # app serves defaults until specs arrive.
            overall_init_timeout=self.init_timeout,
            init_timeout=max(1, round(self.init_timeout)),
            rulesets_sync_interval=self.sync_interval,  # type: ignore[arg-type]
            disable_all_logging=True,  # flagware stores and delivers events itself
            disable_diagnostics=True,
            tier=self.tier,
        )
