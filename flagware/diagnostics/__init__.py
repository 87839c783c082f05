"""The diagnostics page: who you are, what you get, and the events as they arrive.

``Flagware(diagnostics=True)`` makes :class:`FlagwareMiddleware` serve it under
``/_flagware/`` (``diagnostics_path``). It shows this visitor's IDs and
country (never the IP), each gate's value and each experiment's group and
params for this visitor, the latest stored events (exposures included),
refreshed by a small inline script polling ``events.json``, and each
experiment's results chart.

Access (the page reveals every visitor's events, so it is closed by default):

- with a token (``diagnostics_token`` or ``FLAGWARE_DIAGNOSTICS_TOKEN``), only
  requests presenting it: ``?token=...`` once (answered with a redirect that
  drops it from the URL and sets an HttpOnly, SameSite=Strict cookie scoped to
  the page's path), the cookie, or ``Authorization: Bearer ...``;
- without a token, anyone when ``diagnostics="debug"``, else only requests
  from this machine: a loopback peer, a loopback ``Host`` (so a DNS-rebinding
  page in the developer's browser cannot read it) and no forwarding headers (a
  reverse proxy on the same host makes every visitor look local).

A refused request is not answered by this page at all: :meth:`handles` says
no and the app answers the path as if diagnostics were off, so nobody can
probe for the page.

Evaluations on this page go straight to the engine and log no exposures, so
looking at the page never puts the developer into an experiment's results.
"""

from flagware.diagnostics.app import DEFAULT_PATH, DiagnosticsApp

__all__ = ["DEFAULT_PATH", "DiagnosticsApp"]
