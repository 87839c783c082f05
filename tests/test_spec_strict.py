"""The spec is strict: ID types, every section and key, all problems at once, any bad TOML."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from flagware import FlagwareMiddleware, current_flags
from flagware.spec import SpecError, load_spec, parse_spec


def spec_from(text: str) -> Any:
    return parse_spec(tomllib.loads(text), source="flagware.toml")


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as excinfo:
        spec_from(text)
    assert str(excinfo.value) == "\n".join(excinfo.value.problems)
    return excinfo.value.problems


@pytest.mark.parametrize(("unit", "meant"), [("stableId", "stableID"), ("userid", "userID")])
def test_an_id_type_in_the_wrong_case_is_an_error_with_a_did_you_mean(
    unit: str, meant: str
) -> None:
    [problem] = problems(
        f'[experiments.e]\nunit = "{unit}"\ngroups = [{{ name = "A", weight = 100 }}]'
    )
    assert problem.startswith(
        f"flagware.toml: experiments.e.unit: unknown ID type {unit!r} (did you mean {meant!r}?)"
    )


def test_custom_id_types_are_declared() -> None:
    text = '[gates.g]\nunit = "companyID"\n'
    [problem] = problems(text)
    assert "declared in [flagware] custom_ids" in problem
    spec = spec_from('[flagware]\ncustom_ids = ["companyID"]\n' + text)
    assert spec.gates["g"].unit == "companyID" and spec.custom_ids == ("companyID",)
    assert problems('[flagware]\ncustom_ids = ["companyID"]\n[gates.g]\nunit = "companyId"') == [
        "flagware.toml: gates.g.unit: unknown ID type 'companyId' (did you mean 'companyID'?)"
        ' (ID types are case-sensitive: "userID", "stableID", or a custom ID type declared'
        " in [flagware] custom_ids)"
    ]


def test_the_flagware_section_is_checked() -> None:
    assert problems('[flagware]\ncustom_id = ["a"]\ncustom_ids = ["StableID", "bad id", 3]') == [
        "flagware.toml: flagware.custom_id: unknown key (did you mean 'custom_ids'?)"
        " (expected one of: custom_ids)",
        "flagware.toml: flagware.custom_ids[0]: 'StableID' is built in (userID and stableID"
        " need no declaring)",
        "flagware.toml: flagware.custom_ids[1]: invalid ID type 'bad id' (use letters, digits,"
        " '_' and '-')",
        "flagware.toml: flagware.custom_ids[2]: invalid ID type 3 (use letters, digits, '_'"
        " and '-')",
    ]
    # The SDK also reads an ID by its name in lower case: two such would collide.
    twins = '[flagware]\ncustom_ids = ["companyid", "companyID"]\n[gates.g]\nunit = "companyID"'
    assert problems(twins) == [  # and the unit naming one is not "unknown" besides
        "flagware.toml: flagware.custom_ids[1]: 'companyID' differs from 'companyid' only in case"
    ]


def test_every_problem_is_reported_not_only_the_first() -> None:
    found = problems(
        """
        [gate.typo]
        [gates.a]
        rolout = 5
        unit = "stableId"
        [gates.b]
        rollout = 500
        [experiments.e]
        groups = [{ name = "A", weight = 60 }]
        targeting_gate = "c"
        [metrics.m]
        kind = "average"
        """
    )
    assert [p.split(": ")[1] for p in found] == [
        "gate",
        "gates.a.rolout",
        "gates.a.unit",
        "gates.b.rollout",
        "experiments.e.groups",
        "metrics.m.kind",
        "metrics.m.event",
        "experiments.e.targeting_gate",
    ]


def test_every_param_difference_between_groups_is_listed() -> None:
    """A re-check saw "1 problem" for a spec with three (only the first was said)."""
    found = problems(
        """
        [experiments.e]
        groups = [
          { name = "Blue", weight = 50, params = { color = "blue", size = 12 } },
          { name = "Green", weight = 30, params = { colour = "green", size = "large" } },
          { name = "Red", weight = 20, params = { color = 3, extra = true } },
        ]
        """
    )
    assert [p.split(": ", 1)[1] for p in found] == [
        "experiments.e.groups[1].params.colour: 'colour' here, 'color' in group 'Blue'"
        " (every group sets the same parameters)",
        "experiments.e.groups[1].params.size: is a string, but a number in group 'Blue'",
        "experiments.e.groups[2].params: has no 'size', which group 'Blue' sets"
        " (every group sets the same parameters)",
        "experiments.e.groups[2].params.extra: not set in group 'Blue'"
        " (every group sets the same parameters)",
        "experiments.e.groups[2].params.color: is a number, but a string in group 'Blue'",
    ]


def test_a_bad_targeting_gate_gets_a_did_you_mean() -> None:
    [problem] = problems(
        '[gates.beta_users]\n[experiments.e]\ntargeting_gate = "beta_user"\n'
        'groups = [{ name = "A", weight = 100 }]'
    )
    assert problem.endswith(
        "gate 'beta_user' is not defined under [gates] (did you mean 'beta_users'?)"
    )


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 3000 + "]" * 3000,
        "a = " + "{ b = " * 3000 + "1" + " }" * 3000,
        "[" * 5,
        "\x00\x01binary",
    ],
    ids=["nested arrays", "nested tables", "broken header", "binary"],
)
def test_any_toml_that_cannot_be_read_is_a_spec_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "flagware.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=rf"^{path}: invalid TOML: "):
        load_spec(path)


def test_deeply_nested_params_are_an_error() -> None:
    params = "{ a = " * 40 + "1" + " }" * 40
    [problem] = problems(
        f'[experiments.e]\ngroups = [{{ name = "A", weight = 100, params = {params} }}]'
    )
    assert problem.endswith("nested more than 32 levels deep")
    nested: dict[str, Any] = {}
    for _ in range(5000):  # deeper than Python's recursion limit
        nested = {"a": nested}
    group = {"name": "A", "weight": 100, "params": nested}
    with pytest.raises(SpecError, match="nested more than 32 levels deep"):
        parse_spec({"experiments": {"e": {"groups": [group]}}})


def test_unknown_flag_names_warn_once_with_a_did_you_mean(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()

    def app(environ: Any, start_response: Any) -> Any:
        flags = current_flags()
        flags.gate("new_singup")
        flags.gate("button_color")
        flags.experiment("buton_color")
        flags.gate("new_signup")  # defined: no warning
        start_response("200 OK", [])
        return [b""]

    http = Client(FlagwareMiddleware(app, client))
    with caplog.at_level(logging.WARNING, logger="flagware"):
        for _ in range(3):
            http.get("/")
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "flagware: gate 'new_singup' is not defined in the spec "
        f"{client.engine.spec.source} (did you mean 'new_signup'?); it is False for everyone",
        "flagware: gate 'button_color' is not defined in the spec "
        f"{client.engine.spec.source} (it is an experiment: read it with"
        " flags.experiment('button_color')); it is False for everyone",
        "flagware: experiment 'buton_color' is not defined in the spec "
        f"{client.engine.spec.source} (did you mean 'button_color'?); everyone gets empty params",
    ]
    assert client.engine.unknown_names == {
        "new_singup": 3,
        "button_color": 3,
        "buton_color": 3,
    }


def test_ratio_metric_problems_are_all_listed() -> None:
    found = problems(
        '[metrics.r]\nkind = "ratio"\nevent = "x"\nnumerator = { event = "buy", aggregate = "avg" }'
    )
    assert [p.split(": ", 2)[1] for p in found] == [
        "metrics.r.denominator",
        "metrics.r.event",
        "metrics.r.numerator.aggregate",
    ]
    spec = spec_from(
        '[metrics.r]\nkind = "ratio"\nnumerator = { event = "buy", aggregate = "sum" }\n'
        'denominator = { event = "visit" }'
    )
    metric = spec.metrics["r"]
    assert (metric.event, metric.denominator.event, metric.denominator.aggregate) == (
        "buy",
        "visit",
        "count",
    )
