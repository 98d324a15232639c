"""WSGI entry point of the Django recipe (``gunicorn tests.bridge.apps.django_wsgi:application``)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.bridge.apps.django_app")
application = get_wsgi_application()
