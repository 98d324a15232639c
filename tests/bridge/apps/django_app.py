"""The Django recipe in one module: settings, URLconf and a sync view calling loopsafe.run_async.

``DJANGO_SETTINGS_MODULE=tests.bridge.apps.django_app``; the WSGI entry point is `django_wsgi`.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

import loopsafe

from .work import handle, setup

DEBUG = False
SECRET_KEY = "loopsafe-recipe-tests-only"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = __name__
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, object] = {}  # Django's ORM is not used: loopsafe.db is
USE_TZ = True


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"ok {loopsafe.run_async(handle(), timeout=10)}")


urlpatterns = [path("", index)]

setup()
