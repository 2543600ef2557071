"""A pytest plugin, loaded with ``-p`` before Django starts: the suite's environment.

The suite runs as ECHO_ENV=test on PostgreSQL, as production does: unless
``DATABASE_URL`` says otherwise, on this machine's server (127.0.0.1:5432,
user ``postgres``, trust authentication, database ``test``). These are only
defaults: ``ECHO_ENV``/``DATABASE_URL`` given on the command line still win.
Serving (``make run``) never loads this plugin and stays on SQLite.
"""

import os

#: The PostgreSQL the suite runs on unless DATABASE_URL names another database.
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

os.environ.setdefault("ECHO_ENV", "test")
os.environ.setdefault("DATABASE_URL", LOCAL_POSTGRES_URL)
