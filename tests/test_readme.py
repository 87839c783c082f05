"""Every code block in the README runs as written.

Blocks run in a sandbox folder holding the README's own spec (its first TOML
block) and the README's ``templates/signup.html``. An HTML comment right before a block
says how to run it when it is not a plain script:

- ``<!-- readme-test: file NAME -->``: saved as NAME (later blocks import it);
- ``<!-- readme-test: pytest -->``: saved as a test module, run by pytest;
- ``<!-- readme-test: django-settings -->``: a settings.py fragment;
- ``<!-- readme-test: django-demo -->``: tests run by Django's runner against
  ``examples/django_demo`` (with the README's ``FlagwareRunner``);
- ``<!-- readme-test: hash-key-switch -->``: a shell block run by bash in an
  app's folder where the local engine made its key, before the same app
  starts on a loopback Statsig: each visitor must keep their userID;
- ``<!-- readme-test: skip REASON -->``: not run.

TOML blocks must be valid specs; every ``flagware ...`` line of a shell block
must be accepted by the command's parser.
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from flagware import Flagware
from flagware.cli import build_parser
from flagware.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<mode>[^>]*?) -->\n)?^```(?P<lang>\w*)\n(?P<code>.*?)^```$",
    re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    mode: str
    code: str

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(
            line=text.count("\n", 0, match.start("code")),
            lang=match["lang"],
            mode=(match["mode"] or "").strip(),
            code=match["code"],
        )
        for match in BLOCK.finditer(text)
    ]


BLOCKS = readme_blocks()
# The Flask section's template, which its app and the pytest example render.
TEMPLATE = next(b.code for b in BLOCKS if b.lang == "html" and "Sign up" in b.code)
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLAGWARE_", "STATSIG_"))}
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    return clean


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    spec = next(b for b in BLOCKS if b.lang == "toml" and "[gates." in b.code)
    (folder / "flagware.toml").write_text(spec.code)
    (folder / "templates").mkdir()
    (folder / "templates" / "signup.html").write_text(TEMPLATE)
    for block in PYTHON:
        if block.mode.startswith("file "):
            (folder / block.mode.split()[1]).write_text(block.code)
    return folder


def run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env={**env(), **extra}, capture_output=True, text=True, timeout=120
    )


def test_every_python_block_has_a_known_way_to_run() -> None:
    modes = {b.mode.split()[0] if b.mode else "" for b in PYTHON}
    assert modes <= {"", "file", "pytest", "django-settings", "django-demo", "skip"}
    assert len(PYTHON) >= 6


@pytest.mark.parametrize(
    "block", [b for b in PYTHON if b.mode == "" or b.mode.startswith("file ")], ids=str
)
def test_python_block_runs(block: Block, sandbox: Path) -> None:
    result = run([sys.executable, "-c", block.code], sandbox)
    assert result.returncode == 0, f"{block}:\n{block.code}\n{result.stderr}"


@pytest.mark.parametrize("block", [b for b in PYTHON if b.mode == "pytest"], ids=str)
def test_pytest_recipe_passes(block: Block, sandbox: Path) -> None:
    test_file = sandbox / f"test_readme_{block.line}.py"
    test_file.write_text(block.code)
    before = app_state(sandbox)
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            test_file.name,
        ],
        sandbox,
    )
    tests = block.code.count("\ndef test_")
    assert f"{tests} passed" in result.stdout, f"{block}:\n{result.stdout}\n{result.stderr}"
    assert app_state(sandbox) == before  # the plugin kept the tests out of the app's store


def app_state(sandbox: Path) -> dict[str, bytes]:
    folder = sandbox / ".flagware"
    return {p.name: p.read_bytes() for p in folder.glob("*")} if folder.exists() else {}


@pytest.mark.parametrize("block", [b for b in PYTHON if b.mode == "django-settings"], ids=str)
def test_django_settings_fragment(block: Block, sandbox: Path) -> None:
    settings = {"INSTALLED_APPS": [], "MIDDLEWARE": [], "BASE_DIR": sandbox}
    exec(block.code, settings)
    options = set(inspect.signature(Flagware).parameters)
    assert settings["INSTALLED_APPS"] and settings["MIDDLEWARE"]
    assert set(settings["FLAGWARE"]) <= options


@pytest.mark.parametrize("block", [b for b in PYTHON if b.mode == "django-demo"], ids=str)
def test_django_recipe_passes(block: Block, sandbox: Path) -> None:
    module = f"test_readme_django_{block.line}"
    (sandbox / f"{module}.py").write_text(block.code)
    before = app_state(sandbox)
    runner = ["--testrunner", "flagware_runner.FlagwareRunner"]  # the README's, if it has one
    result = run(
        [sys.executable, "-m", "django", "test", module, "-v", "2"]
        + (runner if (sandbox / "flagware_runner.py").exists() else []),
        sandbox,
        PYTHONPATH=os.pathsep.join(
            [str(sandbox), str(ROOT / "examples" / "django_demo"), str(ROOT)]
        ),
        DJANGO_SETTINGS_MODULE="demo.settings",
    )
    tests = block.code.count("    def test_")
    assert result.returncode == 0 and f"Ran {tests} tests" in result.stderr, result.stderr
    assert app_state(sandbox) == before


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.lang == "toml" and not b.mode.startswith("skip")], ids=str
)
def test_toml_blocks_are_valid_specs(block: Block) -> None:
    parse_spec(tomllib.loads(block.code), source=str(block))


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "sh"], ids=str)
def test_flagware_command_lines_parse(block: Block) -> None:
    parser = build_parser()
    for line in block.code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["python"] and words[1:3] == ["manage.py", "flagware"]:
            words = words[2:]  # manage.py flagware: the same parser, defaults from settings
        if not words or Path(words[0]).name != "flagware":
            continue
        if words[1:] == ["--version"]:
            continue
        parser.parse_args(words[1:])  # raises SystemExit on anything it does not accept


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "django"], ids=str)
def test_django_templates_compile(block: Block, sandbox: Path) -> None:
    code = (
        "import sys, django; django.setup()\n"
        "from django.template import engines\n"
        "engines['django'].from_string(sys.stdin.read())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=block.code,
        cwd=sandbox,
        env={
            **env(),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "examples" / "django_demo"), str(ROOT)]),
            "DJANGO_SETTINGS_MODULE": "demo.settings",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# Serves one visitor's userID, on whichever engine the environment selects.
USER_ID_APP = """
from werkzeug.test import Client
from flagware import Flagware, FlagwareMiddleware, current_flags

def app(environ, start_response):
    start_response("200 OK", [])
    return [current_flags().user_id.encode()]

with Flagware.from_env(init_timeout=1, shutdown_timeout=1) as fw:
    visitor = {"REMOTE_ADDR": "198.51.100.7"}
    print(fw.engine_name, Client(FlagwareMiddleware(app, fw)).get("/", environ_base=visitor).text)
"""


SWITCH = [b for b in BLOCKS if b.mode == "hash-key-switch"]


def test_the_readme_says_how_to_keep_user_ids_moving_to_statsig() -> None:
    assert SWITCH and "FLAGWARE_HASH_KEY" in SWITCH[0].code


@pytest.mark.parametrize("block", SWITCH, ids=str)
def test_switching_to_statsig_as_written_keeps_each_visitors_user_id(
    block: Block, tmp_path: Path
) -> None:
    from tests.statsig_stub import StatsigStub

    app = tmp_path / "app"
    app.mkdir()
    spec = next(b for b in BLOCKS if b.lang == "toml" and "[gates." in b.code)
    (app / "flagware.toml").write_text(spec.code)
    local = run([sys.executable, "-c", USER_ID_APP], app)
    assert local.returncode == 0, local.stderr
    engine, user_id = local.stdout.split()
    assert engine == "local" and (app / ".flagware" / "hash_key").exists()
    with StatsigStub() as stub:
        script = f"{block.code}\nexec {shlex.quote(sys.executable)} -c {shlex.quote(USER_ID_APP)}\n"
        switched = run(["bash", "-euc", script], app, STATSIG_API=stub.url)
    assert switched.returncode == 0, switched.stderr
    assert switched.stdout.split() == ["statsig", user_id]


def test_the_fastapi_templates_snippet_gives_every_template_the_flags(sandbox: Path) -> None:
    """A FastAPI trial found no word on templates: the README's context processor
    puts the request's Flags in the template's context, as Flask's extension does."""
    check = (
        "from fastapi.testclient import TestClient\n"
        "from flagware import Flags\n"
        "import fastapi_templates as m\n"
        "with TestClient(m.app) as client:\n"
        "    page = client.get('/signup')\n"
        "assert page.status_code == 200, page.text\n"
        "assert isinstance(page.context['flags'], Flags), page.context\n"
        "color = page.context['flags'].experiment('button_color').get('color', 'blue')\n"
        "assert f'background: {color}' in page.text, page.text\n"
        "print(color)\n"
    )
    result = run([sys.executable, "-c", check], sandbox)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
