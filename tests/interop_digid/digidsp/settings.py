"""Settings of a minimal Django project that is a DigiD relying party (issue 7, interop).

The project runs in its own virtual environment (.venv-digid, see requirements.txt) as a
subprocess of tests/test_interop_digid.py. Everything machine-specific comes from the
environment the test sets: DIGIDSP_DIR (database, private media) and DIGIDSP_SECRET.
"""

from __future__ import annotations

import os
from pathlib import Path

WORK_DIR = Path(os.environ.get("DIGIDSP_DIR", "/tmp/digidsp"))

SECRET_KEY = os.environ.get("DIGIDSP_SECRET", "interop-test-only-" + "x" * 32)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "solo",
    "privates",
    "simple_certmanager",
    "digid_eherkenning",
    "digidsp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "digidsp.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(WORK_DIR / "db.sqlite3")}
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_USER_MODEL = "digidsp.User"
AUTHENTICATION_BACKENDS = ["digid_eherkenning.backends.DigiDBackend"]
LOGIN_URL = "/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

PRIVATE_MEDIA_ROOT = str(WORK_DIR / "private-media")
PRIVATE_MEDIA_URL = "/private-media/"
SENDFILE_BACKEND = "django_sendfile.backends.simple"
STATIC_URL = "/static/"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"digid_eherkenning": {"handlers": ["console"], "level": "INFO"}},
}
