"""Whether an override names what the app's specs define (``UnknownOverrideWarning``).

A misspelt override forces nothing, and one naming what no spec defines
forces what the app never sees outside tests: either way a test may pass for
the wrong reason, so each is said at the test's own line.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from flagware.overrides import overrides

__all__ = ["UnknownOverrideWarning"]


class UnknownOverrideWarning(UserWarning):
    """An override names a gate, experiment or group no local spec defines:
    outside tests the app never sees what it forces (and a misspelt name forces
    nothing), so the test may pass for the wrong reason.
    pytest's ``-W error::flagware.testing.UnknownOverrideWarning`` (or that
    ``filterwarnings`` entry) makes it fail; Python's own ``-W`` cannot name a
    class it has not imported yet, so there use ``-W error::UserWarning``."""

    __module__ = "flagware.testing"  # where it is documented, imported and filtered


def _check_known(
    kind: str,
    name: str,
    group: str | None = None,
    site: tuple[str, int] | None = None,
    *,
    final: bool = False,
) -> None:
    """Warn when no live client's local spec defines what an override names.

    Said only when every live client has a local spec: one on Statsig may
    define any name. With no live client (Django makes its own at the first
    request; a factory may build the app inside the test), the check waits
    for the first client made while the override is in force, and if none
    is, runs as the override ends (``final``) against the closed clients: a
    module's client whose lifespan an earlier test closed serves again, but
    a fixture's closed client with another spec said a right group unknown
    (a re-check trial: a ``settings.FLAGWARE`` swap, then Django's client
    made at the first request). The warning points at ``site`` (a decorated
    test) or at the first caller outside this package (a ``with`` line, a
    fixture call).
    """
    from flagware.lifecycle import _closed_clients, _live_clients
    from flagware.spec import did_you_mean

    # The live clients, and the closed ones still referenced: a module's client
    # whose lifespan an earlier test ended serves the next request again (a
    # new user's trial: a typo passed unsaid whenever such a test ran first,
    # and a right name was said unknown when another client was live). A
    # closed client on Statsig says nothing either way.
    live = [getattr(client.engine, "spec", None) for client in list(_live_clients)]
    closed = [getattr(client.engine, "spec", None) for client in list(_closed_clients)]
    if not live and not final:  # checked when a client is made, or as the override ends
        where = site or _caller()
        forced = overrides.gates if kind == "gate" else overrides.configs

        def later(final: bool = False) -> None:
            if name in forced:
                _check_known(kind, name, group, where, final=final)

        overrides.unchecked.append(later)
        return
    if not live and not closed:  # no client ever: nothing to compare with
        return
    specs = [spec for spec in live + closed if spec is not None]
    if None in live or not specs:  # a live client on Statsig, or only closed ones on it
        return
    # What the live clients' specs define wins, then what the closed ones do:
    # merged, the last spec read won, so a fixture's closed client whose spec
    # gave the experiment other groups made a right group "unknown" to every
    # later test (a new user's trial, failing under filterwarnings = error).
    named = [spec for spec in live if spec is not None] or specs
    found = _defined(named, kind, name) or _defined(specs, kind, name)
    what = f"override of {kind} {name!r}"
    if not found:
        # The live clients' files, which the app reads now (a closed client's
        # may be a fixture's, long done with).
        defined = list(dict.fromkeys(n for spec in specs for n in getattr(spec, f"{kind}s")))
        sources = ", ".join(sorted({str(spec.source) for spec in named}))
        # A trial's app read a gate its spec lacked: the override did reach
        # it, so "forces nothing" was wrong there; both cases are said.
        elsewhere = "reads it as False" if kind == "gate" else "gets no group and its defaults"
        other = "experiment" if kind == "gate" else "gate"
        if _defined(specs, other, name):  # the right name, through the other kind's override
            article = "an" if other == "experiment" else "a"
            hint = f" ({name!r} is {article} {other}: force it as one)"
        else:
            hint = did_you_mean(name, defined)
        message = (
            f"{what}: no {kind} of that name in {sources}{hint};"
            f" outside this override the app {elsewhere}, and a misspelt name forces nothing"
        )
    elif group is not None and not any(group in [g.name for g in x.groups] for x in found):
        names = [g.name for g in found[0].groups]
        message = (
            f"{what}: no group {group!r}{did_you_mean(group, names)} (its groups: "
            f"{', '.join(names)}); exposures will carry a group the experiment never had"
        )
    else:
        return
    file, line = site or _caller()
    warnings.warn_explicit(message, UnknownOverrideWarning, file, line)


def _defined(specs: list[Any], kind: str, name: str) -> list[Any]:
    """What each of ``specs`` defines under ``name`` (a gate or an experiment)."""
    return [getattr(spec, f"{kind}s")[name] for spec in specs if name in getattr(spec, f"{kind}s")]


def _caller() -> tuple[str, int]:
    """Where the test's code is: the first frame outside flagware.testing."""
    frame = sys._getframe(1)
    while os.path.dirname(frame.f_code.co_filename) == _HERE and frame.f_back is not None:
        frame = frame.f_back
    return frame.f_code.co_filename, frame.f_lineno


_HERE = os.path.dirname(__file__)
