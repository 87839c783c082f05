"""The Statsig engine: specs downloaded from Statsig by the SDK, evaluated in process."""

from __future__ import annotations

from statsig.statsig_options import StatsigOptions

from flagware.engine.legacy import LegacySDK


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
    ) -> None:
        super().__init__()
        self.secret = secret
        self.api = api
        self.init_timeout = init_timeout
        self.tier = tier


class StatsigEngine(StatsigSource, LegacySDK):
    def _sdk_key(self) -> str:
        return self.secret

    def _options(self) -> StatsigOptions:
        return StatsigOptions(
            api=self.api,
            # An unreachable API delays the first request of a process by at
            # most this long; the SDK keeps trying in the background and the
            # app serves defaults until specs arrive.
            overall_init_timeout=self.init_timeout,
            init_timeout=max(1, round(self.init_timeout)),
            disable_all_logging=True,  # flagware stores and delivers events itself
            disable_diagnostics=True,
            tier=self.tier,
        )
