#!/usr/bin/env bash
# Django matrix: Django 5.2 on the oldest supported Python (3.11), Django 5.2
# on Python 3.12, and the newest Django that the newest supported Python (3.13)
# allows; the 3.12 and 3.13 legs run the whole suite, so every module is also
# checked on every supported Python (3.11 runs it in .ci/run). Each runs in a fresh
# venv with flagware installed from a copy of this checkout (not editable), so
# the tests import the package as users get it.
#
#   .ci/django-matrix.sh            # all three
#   .ci/django-matrix.sh 3.13       # one
set -euo pipefail
cd "$(dirname "$0")/.."

PYENV_VERSIONS="${PYENV_ROOT:-/root/.pyenv}/versions"
TESTS=(tests/test_django.py tests/test_django_apis.py tests/test_django_asgi.py tests/test_django_demo.py tests/test_testing_plugin.py)
MATRIX=(
  "3.11|django>=5.2,<5.3|django"
  "3.12|django>=5.2,<5.3|all"
  "3.13|django|all"
)

work=$(mktemp -d "${TMPDIR:-/tmp}/flagware-django-matrix.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The working tree as it is (committed or not), without .venv and ignored files.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null | tar -xf - -C "$work/src"

python_for() {  # the newest installed patch release of a minor version, e.g. 3.11 -> 3.11.7
  local found
  found=$(ls -d "$PYENV_VERSIONS/$1".*/bin/python 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$found" ]; then
    echo "django-matrix: no Python $1 under $PYENV_VERSIONS" >&2
    return 1
  fi
  echo "$found"
}

status=0
for entry in "${MATRIX[@]}"; do
  IFS="|" read -r version django scope <<<"$entry"
  if [ "$scope" = all ]; then selected=(tests); else selected=("${TESTS[@]}"); fi
  if [ $# -gt 0 ] && [[ " $* " != *" $version "* ]]; then
    continue
  fi
  python=$(python_for "$version")
  venv="$work/venv-$version"
  "$python" -m venv "$venv"
  # (This machine's pip config names mirrors that may be absent: drop those warnings.)
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$work/src[dev]" "$django" \
    2> >(grep -v "^WARNING: Location .* is ignored" >&2)
  installed=$("$venv/bin/python" -c 'import django, sys; print(f"Python {sys.version.split()[0]}, Django {django.__version__}")')
  echo "django-matrix: $installed"
  if ! (cd "$work/src" && "$venv/bin/python" -m pytest "${selected[@]}" -q -p no:cacheprovider); then
    echo "django-matrix: FAILED on $installed" >&2
    status=1
  fi
done
exit "$status"
