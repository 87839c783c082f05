"""Custom unit IDs under the names the spec declares, for the engine and results alike.

The statsig SDK looks a unit's ID up by its exact name, then by its name in
lower case; results read the exact name. So an app whose resolver returned
``companyid`` for a ``companyID`` experiment had its companies assigned by
the SDK and left out by results ("no units exposed" over a whole run), and
one that returned ``companyId`` had every company in one bucket, without a
word (a new user's trial). A name that differs from a declared one only in
case is stored under the declared name; a name the spec does not declare at
all is kept (Statsig takes any) and said once a process, as either is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flagware.client import Flagware

log = logging.getLogger("flagware")

__all__ = ["declared"]

_said: set[str] = set()


def declared(client: Flagware, ids: Mapping[str, Any]) -> dict[str, Any]:
    """``ids`` with each name as the spec declares it (see the module's text).

    Only the local engine has a spec to tell the names; with Statsig, ``ids``
    is returned as it is."""
    names: tuple[str, ...] = getattr(getattr(client.engine, "spec", None), "custom_ids", ())
    out = dict(ids)
    if not names:
        return out
    for name in ids:
        if name == "stableID" or name in names:
            continue
        match = next((n for n in names if n.lower() == name.lower()), None)
        if match is not None:
            value = out.pop(name)
            if match not in ids:
                out[match] = value
        if name in _said:
            continue
        _said.add(name)
        if match is not None and match in ids:
            log.warning(
                "flagware: a custom ID named %r is left out: %r, the name the spec declares,"
                " is given too",
                name,
                match,
            )
        elif match is not None:
            log.warning(
                "flagware: a custom ID named %r is stored as %r, the name the spec declares"
                " (the SDK and results would read it differently); give it that name",
                name,
                match,
            )
        else:
            log.warning(
                "flagware: a custom ID named %r is not declared in the spec's [flagware]"
                " custom_ids (%s): no experiment is keyed on it; is it misspelt?",
                name,
                ", ".join(names),
            )
    return out
