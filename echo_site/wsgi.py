"""WSGI entry point, for management tooling only: Echo serves over ASGI (uvicorn, `make run`)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echo_site.settings")
application = get_wsgi_application()
