#!/usr/bin/env python
"""The seed lab on Django: ``python examples/django_demo/manage.py runserver``.

Runs on flagware's local engine with flagware.toml beside this file (events in
.flagware/events.db under the working directory), and on Statsig when
STATSIG_SERVER_SECRET and FLAGWARE_HASH_KEY are set.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
