"""What the metric events say about their own collection: a metric whose
event the store never held (misspelled, or not logged yet), and one whose
events were logged by nobody the experiment exposed. Both read as "no effect"
in a table of intervals unless said, so results and ``flagware check`` say them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flagware.events.store import redact
from flagware.events.store.reader import Reader, database_errors, open_reader
from flagware.results import sql
from flagware.results.analysis import MetricData
from flagware.results.model import ResultsError
from flagware.results.moments import metric_events
from flagware.results.verdict import UNCHECKABLE, never_stored_phrase
from flagware.spec import MetricSpec, Spec


def unstored_metric_events(spec: Spec, store_path: str | os.PathLike[str]) -> list[str]:
    """Every catalog metric reading an event the store never held, worded as
    results warn of it (``flagware check``). Nothing for a store that holds no
    metric event yet: every name would be missing there, none misspelled."""
    metrics = list(spec.metrics.values())
    try:
        with open_reader(store_path) as conn:
            names = sql.stored_names(conn)
            if not names:
                return []
            missing = sql.never_stored(conn, (e for m in metrics for e in metric_events(m)), names)
    except database_errors() as exc:
        where = redact(os.fspath(store_path))
        raise ResultsError(f"cannot read event store {where}: {exc}") from None
    return [
        unstored(m, e, missing[e])
        for m in metrics
        for e in dict.fromkeys(metric_events(m))
        if e in missing
    ]


def unstored(metric: MetricSpec, event: str, hint: str) -> str:
    """The warning for ``metric``, whose ``event`` the store never held."""
    if metric.guardrail:
        what = f"{UNCHECKABLE} and blocks the launch"
    elif metric.kind == "mean" or (metric.denominator and event == metric.denominator.event):
        what = "it cannot be computed"  # nothing to divide by
    else:
        what = "it is 0 for every unit"
    return f"{metric.name}: {never_stored_phrase(event, hint)}, so {what}"


def unattributed(
    conn: Reader,
    unit: str,
    metrics: list[MetricSpec],
    data: list[MetricData],
    missing: Mapping[str, str],
    first: int | None,
    until: int,
) -> list[str]:
    """Metrics that are 0 for every exposed unit although their event was logged
    in the window: by units outside the experiment, or under another ID than the
    exposures' (a trial's userID experiment read 0 against 0 from 266 signups
    logged after login, when the userID had changed), which reads as "no effect"."""
    if first is None:
        return []
    said = []
    for m, d in zip(metrics, data, strict=True):
        if m.kind not in ("conversion", "count", "sum") or m.event in missing:
            continue
        if any(g.mean_y != 0.0 or g.m2_y != 0.0 for g in d.moments.values()):
            continue
        if sql.newest_event(conn, m.event, first, until) is None:
            continue
        said.append(
            f"{m.name}: {m.event!r} events were logged in the analysis window, but none by an"
            f" exposed unit after its exposure (unit {unit}), so it is 0 for every unit; if they"
            " carry another ID than the exposures: a webhook or a task that logged them under its"
            " own request's identity (log those with fw.log_event(..., user_id=..., stable_id=...)"
            " for the user they are about), or a userID that changed at login (an experiment on"
            " stableID follows the visitor across it)"
        )
    return said
