"""Django settings for Echo, read from the environment with laptop defaults."""

from __future__ import annotations

import re
import sys
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
# Off unless the developer asks (ECHO_DEBUG=1), in development too: a first run must
# not serve debug pages. Even on, error pages never show secrets (see below).
DEBUG = env_bool("ECHO_DEBUG", False)
# Error reports (the debug page, error e-mails) hide secret-named values everywhere
# and redact every 8-character run of a provider secret (echo_site.exception_reporting).
DEFAULT_EXCEPTION_REPORTER = "echo_site.exception_reporting.EchoExceptionReporter"
DEFAULT_EXCEPTION_REPORTER_FILTER = "echo_site.exception_reporting.EchoExceptionReporterFilter"

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

#: daphne's app does one thing: it makes ``manage.py runserver`` an ASGI server (the
#: chat socket included). Loaded in every process it imports twisted for nothing: in
#: each uvicorn worker and each management command, about 16 MB of memory and a tenth
#: of the start-up (docs/OPERATIONS.md). So only ``runserver`` loads it.
SERVES_WITH_RUNSERVER = sys.argv[1:2] == ["runserver"]

INSTALLED_APPS = [
    *(["daphne"] if SERVES_WITH_RUNSERVER else []),
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

# Every request runs MIDDLEWARE: Django's Security, Common and X-Frame-Options
# middleware run on the event loop (echo_site/middleware.py). Browser requests
# also run ECHO_BROWSER_MIDDLEWARE; API clients with a key skip it: it costs
# thread hops and reads cookies they do not send. On the hot path (key clients' chat
# calls, the probes) the effects of this list are done directly, learnt from its hooks
# (echo_site/middleware_effects.py); with any other list, the hot path runs the chain.
MIDDLEWARE = [
    "echo_site.request_context.RequestIdMiddleware",
    "echo_site.middleware.SecurityMiddleware",
    # A path with NUL or another control character is a 404, a query with NUL a 400,
    # before any view (PostgreSQL refuses NUL: a provider lookup with one was a 500).
    "echo_site.middleware.UrlCharactersMiddleware",
    "echo_site.middleware.CommonMiddleware",
    "echo_site.middleware.XFrameOptionsMiddleware",
    "echo_site.middleware.BrowserMiddleware",
]
ECHO_BROWSER_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

# The admin and Django's deploy checks look for Django's own middleware paths in
# MIDDLEWARE; Echo runs them as above. echo_site.security_checks checks them where they are.
SILENCED_SYSTEM_CHECKS = [
    "admin.E408",
    "admin.E409",
    "admin.E410",
    "security.W001",
    "security.W002",
    "security.W003",
]

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

# The shared cache holds state every worker must see alike (the login throttle's
# counters, plugins_api.access.login_throttle): Redis when REDIS_URL is set, else this
# process's memory, which is right only for one process.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("ECHO_CACHE_PREFIX", "echo"),
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

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
# Upstream URL policy (providers.upstream.policy): link-local and metadata
# addresses are always blocked; these add to the block list or restrict hosts.
ECHO_UPSTREAM_ALLOW = env_list("ECHO_UPSTREAM_ALLOW", [])
ECHO_UPSTREAM_BLOCK = env_list("ECHO_UPSTREAM_BLOCK", [])
ECHO_PLUGIN_DIRS = [Path(p) for p in env_list("ECHO_PLUGIN_DIRS", [str(BASE_DIR / "plugins")])]

# Periodic provider health checks (providers.health.monitor). 0 seconds turns the
# background checks off. The test suite defaults to off: a check round running
# beside every live-server test would add upstream calls and rows the tests do
# not expect; the tests of the monitor set the interval themselves.
ECHO_HEALTH_INTERVAL_SECONDS = env_int(
    "ECHO_HEALTH_INTERVAL_SECONDS", 0 if ECHO_ENV == "test" else 60
)
ECHO_HEALTH_TIMEOUT_SECONDS = env_int("ECHO_HEALTH_TIMEOUT_SECONDS", 5, minimum=1)
# Rows older than this are deleted by the periodic checks; 0 keeps them forever.
ECHO_HEALTH_RETENTION_DAYS = env_int("ECHO_HEALTH_RETENTION_DAYS", 7)
if ECHO_HEALTH_INTERVAL_SECONDS < 0:
    raise ImproperlyConfigured("ECHO_HEALTH_INTERVAL_SECONDS must be 0 (off) or more.")
if ECHO_HEALTH_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("ECHO_HEALTH_RETENTION_DAYS must be 0 (keep forever) or more.")

# The browser chat's websocket (plugins_api.chat.consumer): per-connection limits.
# Longest chat message a websocket frame may carry, in characters: room for a
# long-context prompt (400,000 characters, some 100,000 tokens of English).
ECHO_WS_MAX_MESSAGE_CHARS = env_int("ECHO_WS_MAX_MESSAGE_CHARS", 400_000, minimum=1)
# The largest frame, ECHO_WS_MAX_FRAME_BYTES, is set beside ECHO_MAX_BODY_BYTES below.
ECHO_WS_MESSAGES_PER_MINUTE = env_int("ECHO_WS_MESSAGES_PER_MINUTE", 30, minimum=1)
# Origins (scheme://host[:port]) whose pages may open a chat socket besides the
# site's own origin (the handshake's scheme and Host, the host in ALLOWED_HOSTS);
# see plugins_api.chat.websocket_origins. Defaults to CSRF_TRUSTED_ORIGINS.
ECHO_WS_ALLOWED_ORIGINS = env_list("ECHO_WS_ALLOWED_ORIGINS", CSRF_TRUSTED_ORIGINS)
_not_origins = [
    o for o in ECHO_WS_ALLOWED_ORIGINS if not re.fullmatch(r"https?://(\*\.)?[^/?#*@\s]+", o)
]
if _not_origins:
    raise ImproperlyConfigured(
        f"ECHO_WS_ALLOWED_ORIGINS: {_not_origins[0]!r} is not an origin like"
        " https://chat.example.com (scheme, host, optional port, nothing after;"
        " '*.' may start the host)."
    )

# Origins whose pages may call the API from a browser (CORS, echo_site.cors): off when
# empty (the default); "https://app.example.com", "https://*.example.com", or "*" for any.
# Credentials are never allowed cross-origin: such a page sends a client key.
ECHO_CORS_ORIGINS = env_list("ECHO_CORS_ORIGINS", [])
_not_cors_origins = [
    o for o in ECHO_CORS_ORIGINS if o != "*" and not re.fullmatch(r"https?://(\*\.)?[^/?#*@\s]+", o)
]
if _not_cors_origins:
    raise ImproperlyConfigured(
        f"ECHO_CORS_ORIGINS: {_not_cors_origins[0]!r} is not an origin like"
        " https://app.example.com (scheme, host, optional port, nothing after;"
        " '*.' may start the host), or '*' for any."
    )
# How long a browser may reuse a preflight's answer, in seconds.
ECHO_CORS_MAX_AGE = env_int("ECHO_CORS_MAX_AGE", 600, minimum=0)

# Per-key rate limits (plugins_api.access.key_limits): shared through Redis when
# REDIS_URL is set. When Redis cannot be reached, "local" counts in each worker's
# memory meanwhile (a key then gets up to its limit per worker); "refuse" answers 503.
ECHO_KEY_LIMITS_WHEN_REDIS_DOWN = (
    env_str("ECHO_KEY_LIMITS_WHEN_REDIS_DOWN", "local") or ""
).lower()
if ECHO_KEY_LIMITS_WHEN_REDIS_DOWN not in ("local", "refuse"):
    raise ImproperlyConfigured("ECHO_KEY_LIMITS_WHEN_REDIS_DOWN must be 'local' or 'refuse'.")
ECHO_KEY_LIMITS_PREFIX = env_str("ECHO_CACHE_PREFIX", "echo")

# The largest HTTP request body Echo reads (echo_site.request_body_limit), counted
# as it streams in; base64 images need a few MB. Django's own cap on request.body
# follows it, so a body under the limit is never refused by a smaller default.
ECHO_MAX_BODY_BYTES = env_int(
    "ECHO_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=65536, unit=" (64 KiB)"
)
DATA_UPLOAD_MAX_MEMORY_SIZE = ECHO_MAX_BODY_BYTES
# The chat socket's largest frame follows the message limit: 4 bytes a character
# (UTF-8's most; JSON's escapes of quotes and line ends take 2) and 64 KiB for the
# rest of the frame, so that any message under the character limit fits (1,665,536
# bytes by default), and never more than a POST /chat body may be: a question the
# socket takes fits the HTTP API too. The page checks both before sending.
ECHO_WS_MAX_FRAME_BYTES = env_int(
    "ECHO_WS_MAX_FRAME_BYTES",
    min(4 * ECHO_WS_MAX_MESSAGE_CHARS + 64 * 1024, ECHO_MAX_BODY_BYTES),
    minimum=1024,
)
if ECHO_WS_MAX_FRAME_BYTES > ECHO_MAX_BODY_BYTES:
    raise ImproperlyConfigured(
        f"ECHO_WS_MAX_FRAME_BYTES ({ECHO_WS_MAX_FRAME_BYTES}) must not exceed"
        f" ECHO_MAX_BODY_BYTES ({ECHO_MAX_BODY_BYTES}): a chat question the socket takes"
        " must fit a POST /chat body too."
    )
# daphne (runserver) closes a socket whose message passes its own cap (1 MiB unless
# set): it follows the frame limit. uvicorn's --ws-max-size is 16 MiB by default,
# above any frame the 8 MiB body limit allows.
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = ECHO_WS_MAX_FRAME_BYTES
DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = ECHO_WS_MAX_FRAME_BYTES

# OpenAI's Responses API (plugins_api.compat.responses_store): how long a stored response
# lives (manage.py cleanup_responses deletes older ones), and the largest stored conversation.
ECHO_RESPONSES_RETENTION_DAYS = env_int("ECHO_RESPONSES_RETENTION_DAYS", 30, minimum=1)
ECHO_RESPONSES_MAX_STORED_BYTES = env_int(
    "ECHO_RESPONSES_MAX_STORED_BYTES", 2 * 1024 * 1024, minimum=1024, unit=" bytes"
)
# Threads per process for the database calls of requests on the hot path (key-cache
# misses, stored responses); each keeps one database connection
# (providers.runtime.orm_threads). 0: the request's own thread, as Django's async ORM
# runs a query (the test setting: a test's transaction is seen by its own connection only).
ECHO_ORM_THREADS = env_int("ECHO_ORM_THREADS", 0 if ECHO_ENV == "test" else 4, minimum=0)
# Objects a worker may gain between two of the garbage collector's young collections
# (Python's threshold0, 700 by default), set once the worker's start-up heap is
# frozen (echo_site.asgi.settle_heap). With 700, hundreds of live streams set off
# collections every few milliseconds and full ones that paused a worker for tens
# of milliseconds at once: the stalls of make bench's 256 streams (docs/BENCHMARKS.md).
ECHO_GC_YOUNG_THRESHOLD = env_int("ECHO_GC_YOUNG_THRESHOLD", 20_000, minimum=100)

# Usage accounting (providers.usage.recorder) and metric labels (providers.usage.metric_labels).
# Rows wait in memory for the database at most this many; beyond, the oldest are
# dropped and counted (echo_usage_rows_dropped_total), so an outage cannot eat memory.
ECHO_USAGE_QUEUE_MAX = env_int("ECHO_USAGE_QUEUE_MAX", 10_000, minimum=1)
ECHO_USAGE_FLUSH_SECONDS = env_int("ECHO_USAGE_FLUSH_SECONDS", 1, minimum=1)
# Distinct model labels per provider in /metrics; further models count as "other".
ECHO_METRICS_MODELS_PER_PROVIDER = env_int("ECHO_METRICS_MODELS_PER_PROVIDER", 100)
if ECHO_METRICS_MODELS_PER_PROVIDER < 0:
    raise ImproperlyConfigured("ECHO_METRICS_MODELS_PER_PROVIDER must be 0 or more.")

# Login throttling for /admin/login/ and /accounts/login/ (plugins_api.access.login_throttle),
# counted in the shared cache. After this many failures for one username, or from
# one address, within the window, every attempt (the right password included) is
# refused for the lockout. The address is REMOTE_ADDR; with ECHO_TRUSTED_PROXY_COUNT
# proxies in front that append to X-Forwarded-For, the one the outermost proxy saw.
ECHO_LOGIN_FAILURES_PER_USERNAME = env_int("ECHO_LOGIN_FAILURES_PER_USERNAME", 5)
ECHO_LOGIN_FAILURES_PER_ADDRESS = env_int("ECHO_LOGIN_FAILURES_PER_ADDRESS", 20)
ECHO_LOGIN_WINDOW_SECONDS = env_int("ECHO_LOGIN_WINDOW_SECONDS", 15 * 60)
ECHO_LOGIN_LOCKOUT_SECONDS = env_int("ECHO_LOGIN_LOCKOUT_SECONDS", 15 * 60)
ECHO_TRUSTED_PROXY_COUNT = env_int("ECHO_TRUSTED_PROXY_COUNT", 0)
if ECHO_LOGIN_FAILURES_PER_USERNAME < 1 or ECHO_LOGIN_FAILURES_PER_ADDRESS < 1:
    raise ImproperlyConfigured(
        "ECHO_LOGIN_FAILURES_PER_USERNAME and ECHO_LOGIN_FAILURES_PER_ADDRESS must be at least 1."
    )
if ECHO_LOGIN_WINDOW_SECONDS < 1 or ECHO_LOGIN_LOCKOUT_SECONDS < 1:
    raise ImproperlyConfigured(
        "ECHO_LOGIN_WINDOW_SECONDS and ECHO_LOGIN_LOCKOUT_SECONDS must be at least 1."
    )
if ECHO_TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("ECHO_TRUSTED_PROXY_COUNT must be 0 (no proxy) or more.")
AUTHENTICATION_BACKENDS = ["plugins_api.access.login_throttle.ThrottledModelBackend"]

# GET /v1/models serves each provider's model list from memory for this long
# (providers.runtime.model_lists); concurrent callers share one upstream call.
ECHO_MODEL_LIST_CACHE_SECONDS = env_int("ECHO_MODEL_LIST_CACHE_SECONDS", 60, minimum=1)

# Configuration repair pass (providers.runtime.config_sync): every serving worker compares
# the revision it serves of each provider with the database's this often (one query)
# and applies what differs, so lost broadcasts, SQL changes and restores converge.
ECHO_CONFIG_REPAIR_SECONDS = env_int("ECHO_CONFIG_REPAIR_SECONDS", 5, minimum=1)

# Graceful shutdown (providers.runtime.lifecycle): on SIGTERM a worker refuses new
# requests and sockets, and lets the streams in flight run this long before it ends
# them with a ``shutting_down`` error event; then it flushes usage rows and exits.
ECHO_DRAIN_SECONDS = env_int("ECHO_DRAIN_SECONDS", 30, minimum=0)

# Transport security (django.middleware.security, for every request, key clients' too),
# on by default in production. SECURE_PROXY_SSL_HEADER is set only when
# ECHO_PROXY_SETS_X_FORWARDED_PROTO says a TLS proxy in front sets (overwrites) the
# header: without such a proxy any client could send it and pass for HTTPS. Behind
# a TLS proxy that does not set it, turn SECURE_SSL_REDIRECT off, or every request
# would be redirected again and again. /health stays reachable over plain HTTP for
# load balancers' probes.
_PRODUCTION = ECHO_ENV == "production"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", _PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", _PRODUCTION)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", _PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^health/(live|ready)$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if _PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", _PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", _PRODUCTION)
if SECURE_HSTS_SECONDS < 0:
    raise ImproperlyConfigured("SECURE_HSTS_SECONDS must be 0 (no HSTS header) or more.")
if env_bool("ECHO_PROXY_SETS_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "plugins_api.access.authentication.BearerKeyAuthentication",
        "plugins_api.access.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["plugins_api.access.authentication.IsAdminClient"],
    # DRF's defaults with JSON bounded in size, depth and characters: DRF's own
    # JSONParser turns deep nesting into a 500 and passes NUL on to PostgreSQL.
    "DEFAULT_PARSER_CLASSES": [
        "plugins_api.edge.bounded_json_parser.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "plugins_api.edge.error_responses.api_exception_handler",
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
        "plugins_api.admin_api.openapi.document_chat_endpoint",
    ],
}

LOG_FORMAT = env_str("LOG_FORMAT", "json" if ECHO_ENV == "production" else "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "echo_site.request_context.RequestIdFilter"},
        # Live provider secrets leave every record (providers.secrets.log_redaction).
        "redact_secrets": {"()": "providers.secrets.log_redaction.SecretRedactingFilter"},
        # Django's refusals of bad requests: one warning line each, no traceback.
        "client_fault": {"()": "echo_site.security_log.ClientFaultFilter"},
    },
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "echo_site.request_context.JsonLogFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT if LOG_FORMAT in ("text", "json") else "text",
            "filters": ["request_id", "client_fault", "redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # One line per HTTP request, once answered (echo_site.access_log), whatever LOG_LEVEL says.
        "echo.access": {"level": "INFO" if env_bool("ECHO_ACCESS_LOG", True) else "WARNING"},
        # A line per upstream call: usage rows and metrics already record each one.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}
