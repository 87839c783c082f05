"""The local spec file: validation with clear errors (parse.py), and compilation to a
Statsig DCS (compile.py).

The local engine never evaluates anything itself. ``compile_dcs`` turns the spec into a
``download_config_specs`` document (DCS v1) shaped the way the Statsig console emits it, and
the real ``statsig`` SDK evaluates that document in local mode. Assignments are therefore
Statsig's own: the same salts give the same gate values and groups on Statsig's servers.

Spec file reference (TOML). Every key below is checked; an unknown key, section, ID type or
condition is an error (with a did-you-mean), so a typo never silently changes who sees what,
and every problem is reported at once.

``[gates.<name>]``  a feature gate; ``<name>`` is letters, digits, ``_`` and ``-``.

- ``rollout``  percent of units passing the conditions that get ``true``; 0-100, default 100.
- ``unit``  the ID the rollout hashes: ``"userID"`` (default), ``"stableID"`` or a custom ID
  type declared in ``[flagware] custom_ids``. Case-sensitive: ``"stableId"`` is an error.
- ``salt``  hashing salt; default derived from the gate name (a UUID), so every process and
  restart agrees. Set it to a Statsig gate's salt to reproduce that gate.
- ``enabled``  ``false`` turns the gate off for everyone; default ``true``.
- ``overrides``  ``{ pass = [IDs], fail = [IDs] }``: IDs of the gate's unit forced to a
  value before its rules (Statsig's console overrides).
- ``conditions``  a list of inline tables; a unit must pass ALL of them, and units failing any
  get ``false``. Each table has exactly one of:

  - ``{ country = ["US", "CA"] }``  ISO 3166 alpha-2 codes, matched against ``user.country``
    (flagware derives the country from the IP itself and never sends the IP).
  - ``{ browser = ["Chrome"] }``  browser name parsed from the user agent, case-insensitive.
  - ``{ os = ["Mac OS X"] }``  operating system name parsed from the user agent, ditto.
  - ``{ field = "plan", in = ["pro", "team"] }``  a user field (a StatsigUser attribute such as
    ``email`` or ``locale``, else ``custom.<field>``) is one of the values; compared as strings,
    case-insensitive (Statsig's "any of").
  - ``{ field = "plan", equals = "pro" }``  the field equals the value exactly (type and case).
  - ``{ tier = ["production"] }``  the environment tier (``StatsigOptions(tier=...)``).

``[experiments.<name>]``  an experiment.

- ``unit``  ``"userID"`` (default), ``"stableID"`` or a declared custom ID type.
- ``allocation``  percent of units in the experiment, 0-100 in steps of 0.1, default 100.
  Raising it keeps everyone already in; the rest see the control group's params, no group.
- ``groups``  non-empty list of ``{ name = "...", weight = N, params = { ... } }``: names
  unique (case-insensitive), weights positive, in steps of 0.1, adding up to 100; ``params``
  a table (default empty), with the first group's keys and JSON types in every group.
  The group named "Control" (any case), else the first, is control.
- ``salt``  the group-assignment salt; default derived from the experiment name.
- ``allocation_salt``  the salt deciding who is allocated; default derived from ``salt``, so
  a new salt reshuffles both. Set both to reproduce a Statsig experiment (its layer salt).
- ``targeting_gate``  name of a gate in this spec; units failing it are not in the experiment.
- ``overrides``  ``{ <group> = [IDs] }``: IDs of the experiment's unit forced into a group
  before allocation and targeting; not part of its definition, left out of results.
- ``ship``  a group's name: the decision; every unit gets its params, outside the
  experiment, and results end when the app first served it.
- ``sequential``  ``true`` (the default) makes results always valid (a confidence
  sequence), so they can be read at any time; ``false`` is a fixed horizon.
- ``sequential_tuning``  a comparison's units (a group and the control together) where
  that sequence is tightest, default 5,000: the planned size, set before the start.
- ``restart``  ``true`` starts a fresh analysis period (read by the results module);
  default ``false``. It does not change assignment.

``[metrics.<name>]``  a metric for results; metrics do not change the DCS.

- ``event``  the event name (required).
- ``kind``  ``"conversion"`` (default), ``"count"``, ``"sum"``, ``"mean"`` or ``"ratio"``.
- ``numerator``, ``denominator``  ratio metrics only, instead of ``event``: tables
  ``{ event = "...", aggregate = "count" | "sum" }`` (default ``"count"``).
- ``cuped_days``  days of pre-exposure data for CUPED, default 7; 0 turns it off.
- ``cap_percentile``  sum and count metrics: per-unit values are capped at this
  percentile of the experiment's units, default 99.9 (guardrails: 100); 100 turns it off.
- ``tags``  list of strings, default ``[]``; ``"guardrail"`` makes it a guardrail,
  ``"primary"`` a decision metric (none tagged: every non-guardrail metric is one).
- ``direction``  ``"increase"`` (default) or ``"decrease"``: which way is better.
- ``fresh_within``  hours, a positive number; guardrails only: how recent the data must be.

``[flagware]``  options for the whole spec.

- ``custom_ids``  list of custom ID types (e.g. ``["companyID"]``) that ``unit`` may name.

What the compiled document does for users who are not in an experiment (unallocated or
failing the targeting gate): the SDK returns the experiment's ``defaultValue``, which is the
control group's params, and ``group_name`` None, so they see control but are not counted in it.
"""

from flagware.spec.compile import compile_dcs, gate_rule_id, group_rule_id
from flagware.spec.model import (
    BUCKETS,
    Condition,
    EventAggregate,
    ExperimentSpec,
    GateSpec,
    Group,
    MetricSpec,
    Spec,
    SpecError,
    derived_salt,
)
from flagware.spec.parse import ID_TYPES, did_you_mean, load_spec, parse_spec

__all__ = [
    "BUCKETS",
    "ID_TYPES",
    "Condition",
    "EventAggregate",
    "ExperimentSpec",
    "GateSpec",
    "Group",
    "MetricSpec",
    "Spec",
    "SpecError",
    "compile_dcs",
    "derived_salt",
    "did_you_mean",
    "gate_rule_id",
    "group_rule_id",
    "load_spec",
    "parse_spec",
]
