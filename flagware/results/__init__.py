"""Experiment results: metrics catalog analysis, intervals, SRM, guardrails and verdicts.

``compute_results`` aggregates the local event store in SQL and tests every
group against the control; ``render_*`` turn the result into JSON, a text
table or a self-contained HTML page; ``record_started`` and
``check_unchanged`` keep a started experiment from changing under its results.
"""

from flagware.results.compute import (
    GroupResult,
    GroupUnits,
    GuardrailStatus,
    MetricResult,
    Results,
    ResultsError,
    compute_results,
)
from flagware.results.lock import check_unchanged, read_started, record_started
from flagware.results.render import (
    render_chart_svg,
    render_html,
    render_json,
    render_text,
    to_dict,
)

__all__ = [
    "GroupResult",
    "GroupUnits",
    "GuardrailStatus",
    "MetricResult",
    "Results",
    "ResultsError",
    "check_unchanged",
    "compute_results",
    "read_started",
    "record_started",
    "render_chart_svg",
    "render_html",
    "render_json",
    "render_text",
    "to_dict",
]
