"""A pytest plugin, loaded with ``-p`` before Django starts: run the suite as ECHO_ENV=test.

It only sets defaults, so ``ECHO_ENV``/``DATABASE_URL`` given on the command
line still win.
"""

import os

os.environ.setdefault("ECHO_ENV", "test")
