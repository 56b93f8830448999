"""Loupe settings: every value comes from the environment, read once here.

Two modes share this file and every code path:
- embedded (no DATABASE_URL / REDIS_URL): PostgreSQL and Redis started from wheels by `loupe up`
  (or by the test suite) with their unix sockets under LOUPE_HOME/run, objects under
  LOUPE_HOME/objects. Meant for one person on one machine.
- production: DATABASE_URL, REDIS_URL and SECRET_KEY are required; nothing is guessed.
Importing this module has no side effects: it starts nothing and writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config.env import (
    celery_broker_url,
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_path,
    env_str,
    parse_database_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
LOUPE_HOME = env_path("LOUPE_HOME", "./var")
# Unix sockets of the embedded services; kept short because socket paths are limited to ~107 bytes.
EMBEDDED_RUN_DIR = LOUPE_HOME / "run"
EMBEDDED_DATABASE_NAME = "loupe"

_database_url = env_str("DATABASE_URL")
_redis_url = env_str("REDIS_URL")
EMBEDDED_DATABASE = not _database_url
EMBEDDED_REDIS = not _redis_url
EMBEDDED = EMBEDDED_DATABASE or EMBEDDED_REDIS

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY") or ""
if not SECRET_KEY:
    secret_file = LOUPE_HOME / "secret_key"
    if not EMBEDDED_DATABASE:
        raise ImproperlyConfigured("SECRET_KEY must be set when DATABASE_URL is set (production mode)")
    # Embedded mode: `loupe up` writes a random key on first start; before that (tests, one-off
    # manage.py calls on a fresh checkout) a fixed development key is acceptable because nothing
    # listens beyond 127.0.0.1.
    SECRET_KEY = (
        secret_file.read_text().strip()
        if secret_file.exists()
        else "loupe-embedded-development-key-not-secret"
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
if "*" in ALLOWED_HOSTS and not DEBUG:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS='*' is refused outside DEBUG: list the hosts Loupe is served on"
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
if env_bool("LOUPE_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "projects",
    "storage",
    "labeling",
    "quality",
]

MIDDLEWARE = [
    "config.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

# --- PostgreSQL, the only database -------------------------------------------------------------
if _database_url:
    _dsn = parse_database_url(_database_url).as_django()
else:
    _dsn = {
        "ENGINE": "config.postgresql",
        "NAME": EMBEDDED_DATABASE_NAME,
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": str(EMBEDDED_RUN_DIR),
        "PORT": "5432",
        "OPTIONS": {},
    }
_dsn["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
_dsn["CONN_HEALTH_CHECKS"] = True
# Hot-path statements are prepared once per connection (config/postgresql); off behind a proxy
# that pools by transaction and cannot keep prepared statements.
_dsn["PREPARED_STATEMENTS"] = env_bool("DATABASE_PREPARED_STATEMENTS", True)
DATABASES = {"default": _dsn}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: cache, throttling counters and the Celery broker -----------------------------------
REDIS_URL = _redis_url or f"unix://{EMBEDDED_RUN_DIR / 'redis.sock'}"
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("LOUPE_CACHE_PREFIX", "loupe"),
    }
}

# --- Celery --------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or celery_broker_url(REDIS_URL)
CELERY_RESULT_BACKEND = None  # jobs report to the Job table, not to a result backend
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_TASK_DEFAULT_QUEUE = "default"
LOUPE_QUEUES = ("ingest", "prelabel", "quality", "export", "training", "default")
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("LOUPE_TASK_TIME_LIMIT", 600, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 5
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A message whose worker died is redelivered after this long; jobs also recover much sooner
# through the stalled-job sweep (LOUPE_JOB_STALL_SECONDS), which does not depend on the broker.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("LOUPE_BROKER_VISIBILITY_TIMEOUT", 3600)}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(LOUPE_HOME / "celerybeat-schedule")

# --- Jobs ----------------------------------------------------------------------------------------
# A running job whose heartbeat is older than this is taken over by the next worker.
LOUPE_JOB_STALL_SECONDS = env_int("LOUPE_JOB_STALL_SECONDS", 120, minimum=1)
# How long one Celery task works on a job before handing the rest to a fresh message, so no
# single message runs into the task time limit and workers stay fair between jobs.
LOUPE_JOB_SLICE_SECONDS = env_int("LOUPE_JOB_SLICE_SECONDS", 30, minimum=1)
LOUPE_JOB_RECOVER_INTERVAL = env_int("LOUPE_JOB_RECOVER_INTERVAL", 30, minimum=1)

# --- Object storage ------------------------------------------------------------------------------
LOUPE_STORAGE = env_choice("LOUPE_STORAGE", ("local", "s3"), "local")
LOUPE_OBJECTS_DIR = env_path("LOUPE_OBJECTS_DIR", str(LOUPE_HOME / "objects"))
LOUPE_S3_BUCKET = env_str("LOUPE_S3_BUCKET", "") or ""
LOUPE_S3_ENDPOINT_URL = env_str("LOUPE_S3_ENDPOINT_URL") or None
LOUPE_S3_REGION = env_str("LOUPE_S3_REGION", "us-east-1")
LOUPE_S3_ADDRESSING = env_choice("LOUPE_S3_ADDRESSING", ("path", "virtual", "auto"), "auto")
# Part size of streamed writes (exports) to S3: the memory one writer holds. S3 refuses parts under
# 5 MiB (but the last) and over 5 GiB, and allows 10,000 parts: 16 MiB parts carry up to ~156 GiB.
LOUPE_S3_PART_BYTES = env_int("LOUPE_S3_PART_BYTES", 16 * 1024**2, minimum=5 * 1024**2, maximum=5 * 1024**3)
if LOUPE_STORAGE == "s3" and not LOUPE_S3_BUCKET:
    raise ImproperlyConfigured("LOUPE_STORAGE=s3 needs LOUPE_S3_BUCKET")
LOUPE_URL_EXPIRES_S = env_int("LOUPE_URL_EXPIRES_S", 300, minimum=10, maximum=7 * 24 * 3600)

# --- Ingest ----------------------------------------------------------------------------------------
LOUPE_INGEST_MAX_FILE_BYTES = env_int("LOUPE_INGEST_MAX_FILE_BYTES", 5 * 1024**3, minimum=1024)
LOUPE_UPLOAD_MAX_REQUEST_BYTES = env_int("LOUPE_UPLOAD_MAX_REQUEST_BYTES", 2 * 1024**3, minimum=1024)
LOUPE_UPLOAD_MAX_FILES = env_int("LOUPE_UPLOAD_MAX_FILES", 1000, minimum=1)
LOUPE_INGEST_CHUNK = env_int("LOUPE_INGEST_CHUNK", 32, minimum=1, maximum=1000)
# Workers that may work on one ingest job at once (each leases chunks).
LOUPE_INGEST_RUNNERS = env_int("LOUPE_INGEST_RUNNERS", 2, minimum=1, maximum=256)
LOUPE_INGEST_THREADS = env_int("LOUPE_INGEST_THREADS", 4, minimum=1, maximum=64)
# Objects no row references are deleted after this long (an ingest may be between its object and its
# row); abandoned staging uploads too.
LOUPE_SWEEP_GRACE_S = env_int("LOUPE_SWEEP_GRACE_S", 24 * 3600, minimum=60)
LOUPE_SWEEP_INTERVAL_S = env_int("LOUPE_SWEEP_INTERVAL_S", 3600, minimum=60)
# Presigned uploads above this size go to S3 in parts of LOUPE_MULTIPART_PART_BYTES (5 MiB at least).
LOUPE_MULTIPART_UPLOAD_BYTES = env_int("LOUPE_MULTIPART_UPLOAD_BYTES", 100 * 1024**2, minimum=5 * 1024**2)
LOUPE_MULTIPART_PART_BYTES = env_int("LOUPE_MULTIPART_PART_BYTES", 64 * 1024**2, minimum=5 * 1024**2)
LOUPE_DUPLICATES_TIMEOUT_MS = env_int("LOUPE_DUPLICATES_TIMEOUT_MS", 10_000, minimum=1)
LOUPE_ARCHIVE_MAX_ENTRIES = env_int("LOUPE_ARCHIVE_MAX_ENTRIES", 100_000, minimum=1)
LOUPE_ARCHIVE_MAX_BYTES = env_int("LOUPE_ARCHIVE_MAX_BYTES", 20 * 1024**3, minimum=1024)
LOUPE_URL_FETCH_TIMEOUT = env_int("LOUPE_URL_FETCH_TIMEOUT", 60, minimum=1)
# Networks URL import may reach although they are not public (an internal data server). Empty:
# only public addresses.
LOUPE_URL_FETCH_ALLOWED_NETWORKS = env_list("LOUPE_URL_FETCH_ALLOWED_NETWORKS")
# Pre-labeling (labeling/prelabel.py): model servers are usually internal hosts, so the networks
# they may live in are allowed explicitly (empty: only public addresses).
LOUPE_MODEL_ALLOWED_NETWORKS = env_list("LOUPE_MODEL_ALLOWED_NETWORKS")
LOUPE_MODEL_TIMEOUT_S = env_int("LOUPE_MODEL_TIMEOUT_S", 60, minimum=1)
LOUPE_PREDICT_TIMEOUT_S = env_int("LOUPE_PREDICT_TIMEOUT_S", 15, minimum=1)
LOUPE_PRELABEL_BATCH = env_int("LOUPE_PRELABEL_BATCH", 32, minimum=1, maximum=256)
# How model servers reach Loupe's signed media links when objects are in the local folder.
LOUPE_PUBLIC_URL = env_str("LOUPE_PUBLIC_URL") or "http://127.0.0.1:8000"
# Uploads stream to temporary files, never into memory beyond this.
FILE_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.TemporaryFileUploadHandler"]
DATA_UPLOAD_MAX_NUMBER_FILES = LOUPE_UPLOAD_MAX_FILES

# --- Webhooks (labeling/webhooks, docs/webhooks.md) -------------------------------------------
# Receivers are checked like URL import: public addresses only, plus LOUPE_URL_FETCH_ALLOWED_NETWORKS.
LOUPE_WEBHOOK_TIMEOUT_S = env_int("LOUPE_WEBHOOK_TIMEOUT_S", 10, minimum=1, maximum=60)
LOUPE_WEBHOOK_MAX_ATTEMPTS = env_int("LOUPE_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1, maximum=30)
# Wait before the 2nd attempt; it doubles for each later one, up to the cap. The cap stays under
# the broker's visibility timeout, past which Redis would hand a waiting retry to a second worker.
LOUPE_WEBHOOK_BACKOFF_S = env_int("LOUPE_WEBHOOK_BACKOFF_S", 30, minimum=1)
LOUPE_WEBHOOK_BACKOFF_MAX_S = env_int("LOUPE_WEBHOOK_BACKOFF_MAX_S", 1800, minimum=1)
# Finished deliveries (and their attempts) are deleted after this many days.
LOUPE_WEBHOOK_RETENTION_DAYS = env_int("LOUPE_WEBHOOK_RETENTION_DAYS", 30, minimum=1)

# --- API -----------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "projects.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "config.rest.CursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "config.rest.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": [
        "config.throttling.AnonRateThrottle",
        "config.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("LOUPE_THROTTLE_ANON", "120/min"),
        "user": env_str("LOUPE_THROTTLE_USER", "6000/min"),
    },
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Loupe API",
    "DESCRIPTION": "Data-centric labeling platform: datasets, projects, annotation, review, QC, releases.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "OrganizationRole": "projects.models.OrgRole",
        "ProjectRole": "projects.models.ProjectRole",
        "JobState": "projects.models.JobState",
        "TaskState": "labeling.models.TaskState",
        "AnnotationState": "labeling.models.AnnotationState",
    },
}

DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("LOUPE_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)

# --- Auth, i18n, static --------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
# Only for operators who prefer collectstatic behind a CDN; WhiteNoise needs no collected copy.
STATIC_ROOT = env_str("LOUPE_STATIC_ROOT") or None
# WhiteNoise serves the API docs' assets from the installed apps, so /api/docs/ works offline and
# without a collectstatic step in embedded mode.
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
