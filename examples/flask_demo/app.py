"""The seed lab's Flask app; it ships inside flagware (``flagware.demo.app``) so that
``flagware demo`` works from any install.

    flask --app examples.flask_demo.app run      # or: flagware demo --serve
"""

from flagware.demo.app import SPEC, create_app

__all__ = ["SPEC", "create_app"]
