"""The plugin guide's spelling of the generator: ``python utils/plugin_template.py --name ...``.

A thin alias of ``python manage.py startprovider``, kept at this exact path
because the guide promises it (the project otherwise avoids ``utils`` names).
"""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echo_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", "startprovider", *sys.argv[1:]])
