"""Django settings for Echo, read from the environment with laptop defaults."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from echo_site.environment import (
    echo_env,
    encryption_keys,
    env_bool,
    env_int,
    env_list,
    env_str,
    secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("ECHO_VAR_DIR", str(BASE_DIR / "var")))

ECHO_ENV = echo_env()
SECRET_KEY = secret_key(ECHO_ENV, VAR_DIR)
# Provider secrets are encrypted at rest: the first key encrypts, all decrypt.
ECHO_ENCRYPTION_KEYS = encryption_keys(ECHO_ENV, VAR_DIR)
DEBUG = env_bool("DEBUG", ECHO_ENV == "development")

HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000)
ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS",
    ["127.0.0.1", "localhost", "[::1]", "testserver"] if ECHO_ENV != "production" else [],
)
if ECHO_ENV == "production" and "*" in ALLOWED_HOSTS:
    # The websocket origin check trusts ALLOWED_HOSTS: "*" would let any site's
    # page open a chat socket with a logged-in user's cookies.
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS must not contain '*' when ECHO_ENV=production; list the site's host names."
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "providers",
    "plugins_api",
]

# Browser requests run ECHO_BROWSER_MIDDLEWARE; API clients with a Bearer key
# skip it (see echo_site/middleware.py): it costs thread hops and reads cookies
# they do not send.
MIDDLEWARE = [
    "echo_site.request_context.RequestIdMiddleware",
    "echo_site.middleware.BrowserMiddleware",
]
ECHO_BROWSER_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# The admin looks for its middleware in MIDDLEWARE; BrowserMiddleware runs them.
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410"]

ROOT_URLCONF = "echo_site.urls"
ASGI_APPLICATION = "echo_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'echo.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A fresh clone has no var/ yet; SQLite creates files, not folders.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # WAL lets the server read while a management command writes.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = "PRAGMA journal_mode=WAL;"
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # Wait for a lock rather than fail at once when another thread writes.
    DATABASES["default"]["OPTIONS"]["timeout"] = 20
    # Tests that serve over real HTTP share the database with a server thread:
    # an in-memory shared-cache database fails such readers at once ("table is
    # locked"), a file in WAL mode lets them wait. One file per test process.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": env_str("ECHO_CHANNEL_PREFIX", "echo")},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Echo's own settings.
ECHO_CONFIG_DIR = Path(env_str("ECHO_CONFIG_DIR", str(BASE_DIR / "config")))
# Upstream URL policy (providers.upstream_policy): link-local and metadata
# addresses are always blocked; these add to the block list or restrict hosts.
ECHO_UPSTREAM_ALLOW = env_list("ECHO_UPSTREAM_ALLOW", [])
ECHO_UPSTREAM_BLOCK = env_list("ECHO_UPSTREAM_BLOCK", [])
ECHO_PLUGIN_DIRS = [Path(p) for p in env_list("ECHO_PLUGIN_DIRS", [str(BASE_DIR / "plugins")])]

# Periodic provider health checks (providers.health_monitor). 0 seconds turns the
# background checks off. The test suite defaults to off: a check round running
# beside every live-server test would add upstream calls and rows the tests do
# not expect; the tests of the monitor set the interval themselves.
ECHO_HEALTH_INTERVAL_SECONDS = env_int(
    "ECHO_HEALTH_INTERVAL_SECONDS", 0 if ECHO_ENV == "test" else 60
)
ECHO_HEALTH_TIMEOUT_SECONDS = env_int("ECHO_HEALTH_TIMEOUT_SECONDS", 5)
# Rows older than this are deleted by the periodic checks; 0 keeps them forever.
ECHO_HEALTH_RETENTION_DAYS = env_int("ECHO_HEALTH_RETENTION_DAYS", 7)
if ECHO_HEALTH_INTERVAL_SECONDS < 0:
    raise ImproperlyConfigured("ECHO_HEALTH_INTERVAL_SECONDS must be 0 (off) or more.")
if ECHO_HEALTH_TIMEOUT_SECONDS < 1:
    raise ImproperlyConfigured("ECHO_HEALTH_TIMEOUT_SECONDS must be at least 1.")
if ECHO_HEALTH_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("ECHO_HEALTH_RETENTION_DAYS must be 0 (keep forever) or more.")

# The browser chat's websocket (plugins_api.consumers): per-connection limits.
ECHO_WS_MAX_FRAME_BYTES = env_int("ECHO_WS_MAX_FRAME_BYTES", 64 * 1024)
ECHO_WS_MESSAGES_PER_MINUTE = env_int("ECHO_WS_MESSAGES_PER_MINUTE", 30)
if ECHO_WS_MAX_FRAME_BYTES < 1024:
    raise ImproperlyConfigured("ECHO_WS_MAX_FRAME_BYTES must be at least 1024.")
if ECHO_WS_MESSAGES_PER_MINUTE < 1:
    raise ImproperlyConfigured("ECHO_WS_MESSAGES_PER_MINUTE must be at least 1.")

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "plugins_api.authentication.BearerKeyAuthentication",
        "plugins_api.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["plugins_api.authentication.IsAdminClient"],
    "EXCEPTION_HANDLER": "plugins_api.error_responses.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Echo API",
    "DESCRIPTION": "One gateway in front of every AI model provider.",
    "VERSION": "0.1.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "plugins_api.openapi.document_chat_endpoint",
    ],
}

LOG_FORMAT = env_str("LOG_FORMAT", "json" if ECHO_ENV == "production" else "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "echo_site.request_context.RequestIdFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "echo_site.request_context.JsonLogFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT if LOG_FORMAT in ("text", "json") else "text",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
