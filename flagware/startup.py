"""What a client says as it is made: where its flags come from, which SDK
evaluates them, and a Statsig secret in the environment that it ignores.

A new user's trial of Statsig could not tell from the log which mode a process
had chosen: an explicit ``spec=`` (the README's own Flask and Django recipes)
beats ``STATSIG_SERVER_SECRET``, and an empty one is no secret, so both ran
the local spec without a word.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from flagware.events.store import redact
from flagware.settings import shown_url
from flagware.shared_key import key_id

if TYPE_CHECKING:
    from flagware.client import Flagware

log = logging.getLogger("flagware")

SECRET = "STATSIG_SERVER_SECRET"
SDKS = {"legacy": "the legacy statsig SDK", "core": "Statsig's Core SDK"}


def announce(client: Flagware, *, spec: str | os.PathLike[str] | None) -> None:
    """The one INFO line a client logs when made (no secret, no password)."""
    api, store = client.statsig_api, redact(client.event_store)
    if not client._shared_store:
        # The absolute path: a Celery worker started from another folder wrote
        # a second store there, and the line said only ".flagware/events.db"
        # (a new user's trial).
        store = os.path.abspath(store)
    if api is None:
        assert spec is not None
        where = f"the local spec {os.path.abspath(os.fspath(spec))}"
        events = f"stored in {store}"
    else:
        where = f"Statsig at {shown_url(api)}"
        events = f"stored in {store} " + (
            "(isolated for tests: nothing is delivered)"
            if client.isolated
            else "and delivered to Statsig"
        )
    sdk = SDKS.get(client.engine_sdk, client.engine_sdk)
    # The key's fingerprint, never the key: hosts sharing a store must share
    # the key, and a host with another one split visitors across groups with
    # one warning, on whichever host started next (a multi-host trial).
    key = (
        "" if client.isolated or not client.hash_key else f"; hash key id {key_id(client.hash_key)}"
    )
    log.info("flagware: flags from %s, evaluated by %s; events %s%s", where, sdk, events, key)


def warn_ignored_secret(*, spec: str | os.PathLike[str], spec_given: bool) -> None:
    """A warning when ``STATSIG_SERVER_SECRET`` is set and the local spec is used anyway.

    Called only for a client on the local spec, outside tests' isolation (where
    a CI secret beside ``spec=`` is the normal case).
    """
    value = os.environ.get(SECRET)
    if value is None:
        return
    path = os.path.abspath(os.fspath(spec))
    if value.strip() and spec_given:
        log.warning(
            "flagware: %s is set but ignored: a spec was given explicitly (spec=, or 'spec'"
            " in settings.FLAGWARE or app.config['FLAGWARE']), and explicit options win over"
            " the environment, so flags come from the local spec %s and nothing is sent to"
            " Statsig; leave the spec out to use Statsig",
            SECRET,
            path,
        )
    elif not value.strip() and not spec_given:
        log.warning(
            "flagware: %s is set but empty, so it is ignored and flags come from the local"
            " spec %s; set it to the server secret to use Statsig, or unset it",
            SECRET,
            path,
        )
