from __future__ import annotations

import datetime as dt
import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import django_stubs_ext
from csp.constants import NONCE, NONE, SELF, UNSAFE_EVAL, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

# Generic admin and queryset classes (ModelAdmin[BatchJob]) must be subscriptable at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


# psycopg prepares a statement once it has run this many times in a session, or at once when
# the caller asks (engine/sql.py does): in effect, only when asked.
PREPARE_ONLY_WHEN_ASKED = 1 << 30


def _whole_option(name: str, options: dict[str, Any]) -> int:
    value = options[name]
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"DATABASE_URL: {name} must be a whole number, got {value!r}"
        ) from None


def database_from_url(url: str) -> dict[str, Any]:
    """Turn DATABASE_URL into a DATABASES entry.

    Only the two engines we support: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``
    and ``postgres://user:password@host:port/name?sslmode=...``.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else parts.path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": path if os.path.isabs(path) else BASE_DIR / path,
            "OPTIONS": {
                # web + beat + two workers write at once. WAL lets readers run beside the
                # single writer, the busy timeout makes writers queue instead of failing, and
                # IMMEDIATE takes the write lock at BEGIN, so a transaction never has to upgrade
                # a read lock half way (the upgrade is what raises "database is locked").
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        options: dict[str, Any] = dict(parse_qsl(parts.query))
        # A process stopped in the middle of a transaction (SIGSTOP, a debugger, a hung NFS
        # read) would hold its row locks for ever; PostgreSQL ends such a session after this
        # many seconds idle inside a transaction (0: never). Statements that run long are not
        # idle, so no honest transaction is cut; only one left open while nothing happens.
        idle = env_int("DB_IDLE_IN_TRANSACTION_TIMEOUT", 300)
        if idle > 0:
            flag = f"-c idle_in_transaction_session_timeout={idle * 1000}"
            options["options"] = f"{options.get('options', '')} {flag}".strip()
        if env_bool("DB_PREPARED_STATEMENTS", True):
            # The engine's hot-path statements (engine/sql.py, a few per task) are prepared
            # once per session: PostgreSQL then neither parses them again nor, once it finds
            # a generic plan as good as its custom ones, plans them (bench/README.md, issue
            # 16's fourth pass). Django's own queries bind on the client and are never
            # prepared. Off for a pooler that cannot keep prepared statements.
            options.setdefault("prepare_threshold", PREPARE_ONLY_WHEN_ASKED)
        if isinstance(options.get("prepare_threshold"), str):
            options["prepare_threshold"] = _whole_option("prepare_threshold", options)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path[1:]),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": options,
            # Workers and beat are long-lived; keep their connection but check it before use
            # so a restarted PostgreSQL costs one failed query, not a dead process.
            "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60),
            "CONN_HEALTH_CHECKS": True,
        }
    raise ImproperlyConfigured(
        f"DATABASE_URL: unsupported scheme {parts.scheme!r} (use sqlite or postgres)"
    )


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# Off unless asked for (bin/dev asks): the debug page shows settings, the broker URL among them.
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it to a long random value (python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(50))'), as deploy/systemd/batchadmin.env.example "
            "shows, or set DEBUG=1 on a development machine."
        )
    SECRET_KEY = "dev-only-secret-key-used-because-DEBUG-is-on"
# The debug page and error reports never show a URL's password (the broker's, the cache's).
DEFAULT_EXCEPTION_REPORTER_FILTER = "batchadmin.lib.reporting.SettingsFilter"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# Where people reach this site; links in alert e-mails start with it.
SITE_ROOT = os.environ.get("SITE_ROOT", "http://localhost:8000").rstrip("/")

# --- HTTPS (README, Running in production) ---------------------------------------------
# A site reached over https:// (SITE_ROOT) gets secure cookies, HSTS and a redirect of plain
# HTTP by default; each can be set on its own. Behind a reverse proxy that ends TLS, name the
# header it sets (SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto) so Django knows the request was
# https; only when the proxy always sets or strips it, or clients could forge it.
HTTPS = urlsplit(SITE_ROOT).scheme == "https"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", HTTPS)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if proxy_header := os.environ.get("SECURE_PROXY_SSL_HEADER", ""):
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + proxy_header.upper().replace("-", "_"), "https")
_site = urlsplit(SITE_ROOT)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [f"{_site.scheme}://{_site.netloc}"])
# Asking browsers' preload lists for HSTS commits the whole domain and its subdomains to
# HTTPS for months: the domain owner's decision (SECURE_HSTS_PRELOAD=1), not a default.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# Content Security Policy (django-csp): scripts from this site's files only, never from an
# injected <script> or on*= attribute. The templates have no inline script; one added later
# needs <script nonce="{{ CSP_NONCE }}">. 'unsafe-eval': htmx evaluates the [condition]
# filters of hx-trigger (the bell polls only while the tab is visible) with Function().
# Inline styles are allowed (style= in templates, the indicator styles htmx inserts): they
# run no code, and img-src keeps a url() in them from sending anything elsewhere.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE, UNSAFE_EVAL],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_filters",
    "template_partials",
    "django_celery_beat",
    "axes",
    "csp",
    "batchadmin.accounts",
    "batchadmin.servers",
    "batchadmin.jobs",
    "batchadmin.processes",
    "batchadmin.alerts",
    "batchadmin.audit",
    "batchadmin.engine",
    "batchadmin.api",
    "batchadmin.djangotasks",
    # django.tasks is part of Django from 6.0; on 5.2 the django-tasks backport provides it.
    *([] if find_spec("django.tasks") else ["django_tasks"]),
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "batchadmin.accounts.middleware.TimezoneMiddleware",
    # Last, as django-axes requires: turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "batchadmin.urls"
WSGI_APPLICATION = "batchadmin.wsgi.application"

# django-ninja's templates and static files: the API docs page's Swagger UI, served from here
# rather than a CDN. Found without importing the package: listed in INSTALLED_APPS, it would
# import ninja and Pydantic in every process at start-up (a worker, beat, each manage.py run),
# which only the web needs, and only when the API is called.
NINJA_DIR = Path(find_spec("ninja").origin or "").parent  # type: ignore[union-attr]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates", NINJA_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
            ],
            "builtins": ["template_partials.templatetags.partials"],
        },
    }
]

DATABASES = {
    "default": database_from_url(os.environ.get("DATABASE_URL", "sqlite:///batchadmin.sqlite3"))
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": env_int("PASSWORD_MIN_LENGTH", 10)},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Sign-in throttling (django-axes): AxesStandaloneBackend comes first and refuses a locked-out
# sign-in before ModelBackend hashes the password, so a flood of wrong passwords costs one
# query each instead of a password hash each (100 concurrent ones froze the site for 35 s).
# The REST API's personal tokens (accounts/tokens.py) do not go through these backends.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Locked out: this many failed sign-ins for one user name from one address ...
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# ... and for this long after the last of them (the failures are forgotten then too).
AXES_COOLOFF_TIME = dt.timedelta(minutes=env_float("AXES_COOLOFF_MINUTES", 15))
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "batchadmin.accounts.lockout.locked_out"
# The address: REMOTE_ADDR, or behind this many reverse proxies (nginx in front of gunicorn:
# 1) the one they recorded in X-Forwarded-For; otherwise every user would share the proxy's.
BATCH_TRUSTED_PROXIES = env_int("BATCH_TRUSTED_PROXIES", 0)
AXES_CLIENT_IP_CALLABLE = "batchadmin.accounts.lockout.client_address"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static", NINJA_DIR / "static"]
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "media"))
MEDIA_URL = "media/"

EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("Set EMAIL_USE_TLS (STARTTLS, port 587) or EMAIL_USE_SSL, not both")
# Seconds an SMTP connect or command may take; without it a hung mail server hangs delivery.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "batchadmin@localhost")
# Alert e-mails (batchadmin/alerts/delivery.py): after failed attempt N the next one waits
# base * 2 ** (N - 1) seconds, capped below the broker's visibility timeout (an hour) so Redis
# does not hand a waiting retry to a second worker; after BATCH_ALERT_EMAIL_ATTEMPTS attempts
# (about two hours with the defaults) the e-mail is marked failed.
BATCH_ALERT_RETRY_SECONDS = env_float("BATCH_ALERT_RETRY_SECONDS", 30)
BATCH_ALERT_RETRY_MAX_SECONDS = env_float("BATCH_ALERT_RETRY_MAX_SECONDS", 1800)
BATCH_ALERT_EMAIL_ATTEMPTS = env_int("BATCH_ALERT_EMAIL_ATTEMPTS", 10)
# An e-mail still "sending" after this long lost its worker mid-send and is tried again.
BATCH_ALERT_SENDING_TIMEOUT_SECONDS = env_float("BATCH_ALERT_SENDING_TIMEOUT_SECONDS", 600)
# The tick's sweep runs this often; it resends the delivery of events still unprocessed this
# long after they were written (a lost message) and of e-mails this long past their retry.
BATCH_ALERT_SWEEP_SECONDS = env_float("BATCH_ALERT_SWEEP_SECONDS", 30)
# "Running long" alert: a run is stuck when it has run BATCH_STUCK_FACTOR times the median of
# the job's last BATCH_STUCK_RUNS runs that ended Ended, and at least BATCH_STUCK_MIN_MINUTES
# more than that median; jobs with fewer than BATCH_STUCK_MIN_RUNS such runs are not judged.
BATCH_STUCK_FACTOR = env_float("BATCH_STUCK_FACTOR", 3)
BATCH_STUCK_RUNS = env_int("BATCH_STUCK_RUNS", 10)
BATCH_STUCK_MIN_RUNS = env_int("BATCH_STUCK_MIN_RUNS", 5)
BATCH_STUCK_MIN_MINUTES = env_float("BATCH_STUCK_MIN_MINUTES", 10)
# "Cannot start" alert: a task of a running job has been ready this long and no online batch
# server serves its group.
BATCH_UNSERVED_AFTER_SECONDS = env_float("BATCH_UNSERVED_AFTER_SECONDS", 60)
# Both stuck checks run at most this often (they are queries over every running job).
BATCH_STUCK_CHECK_SECONDS = env_float("BATCH_STUCK_CHECK_SECONDS", 30)
# Deadlines (alerts/deadlines.py): the check of runs at risk or late runs this often, and a run
# not started this long after its scheduled start is at risk whatever its usual duration.
BATCH_DEADLINE_CHECK_SECONDS = env_float("BATCH_DEADLINE_CHECK_SECONDS", 30)
BATCH_DEADLINE_LATE_START_SECONDS = env_float("BATCH_DEADLINE_LATE_START_SECONDS", 300)

# Webhooks (alerts/webhooks.py): each request may take this long; a failed one is retried like
# an e-mail (BATCH_ALERT_RETRY_*) up to BATCH_WEBHOOK_ATTEMPTS times. Private and loopback
# addresses are refused unless allowed here (a receiver inside the company network).
BATCH_WEBHOOK_TIMEOUT_SECONDS = env_float("BATCH_WEBHOOK_TIMEOUT_SECONDS", 10)
BATCH_WEBHOOK_ATTEMPTS = env_int("BATCH_WEBHOOK_ATTEMPTS", 10)
BATCH_WEBHOOK_ALLOW_PRIVATE = env_bool("BATCH_WEBHOOK_ALLOW_PRIVATE", False)

# --- REST API (docs/api.md) -----------------------------------------------------------
# Requests per token in each window of BATCH_API_RATE_WINDOW seconds (0: no limit), counted
# in the cache below, which every web process shares.
BATCH_API_RATE_LIMIT = env_int("BATCH_API_RATE_LIMIT", 600)
BATCH_API_RATE_WINDOW = env_int("BATCH_API_RATE_WINDOW", 60)
BATCH_API_CACHE = "default"
# GET /api/v1/jobs/ID/wait answers after this many seconds at most. Below gunicorn's default
# worker timeout (30 s), so a long poll never looks like a hung worker.
BATCH_API_WAIT_MAX_SECONDS = env_float("BATCH_API_WAIT_MAX_SECONDS", 25)
CACHES = {
    "default": {
        # Redis, so every web process counts the same requests; the broker's by default.
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get(
            "CACHE_URL", os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
        ),
        "KEY_PREFIX": "batchadmin",
        # Give up within a second, as lib/broker.py does: a slow cache must not hang the API.
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

# --- django.tasks (docs/django-tasks.md) ---------------------------------------------------
# batchadmin is the default backend: task.enqueue() makes a one-task batch job. A task's
# queue_name is a batch group; MAX_RETRIES (0-5) and TIME_LIMIT (seconds) apply to its task.
TASKS = {
    "default": {
        "BACKEND": "batchadmin.djangotasks.backend.BatchadminBackend",
        "OPTIONS": {"MAX_RETRIES": env_int("BATCH_TASKS_MAX_RETRIES", 0)},
    }
}

# --- Celery ---------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
# The database is the record of every task; Celery results would be a second copy.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Batch tasks can run for hours: ack after the run so a dead worker's message is redelivered,
# and take one message at a time so a long task does not hold others hostage.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A broker blip must not kill running batch tasks (Celery 6 will default this to True): the
# messages of running tasks come back to the queue, and the claim turns those copies away.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "batch.default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redelivery of an unacked message after a lost worker. The batch lease (below) notices a lost
# server far sooner; this only bounds how long a stray message lingers.
# priority_steps: each batch queue is one Redis list per step and a worker pops the lowest
# step first; batchadmin/engine/priority.py maps scheduling priorities (and aging) onto 0-8.
# 0-9 include kombu's default steps (0, 3, 6, 9), so every list an older version or a plain
# kombu client may have filled is still read and counted.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
    "priority_steps": list(range(10)),
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
# Celery's Django fix-up closes the database connection after every task unless told to reuse
# it: a new PostgreSQL backend per task costs far more than the task. Keep connections (run_task
# calls close_old_connections(), so CONN_MAX_AGE and health checks still apply).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_BEAT_SCHEDULER = "batchadmin.engine.beat:BatchScheduler"
CELERY_TIMEZONE = "UTC"

# --- batch engine ---------------------------------------------------------------------
# A claimed task holds a lease that its worker renews every BATCH_LEASE_SECONDS / 3. When a
# batch server dies, the beat tick fails the attempt once the lease has run out, so a task on a
# dead server is retried or errors within BATCH_LEASE_SECONDS + one tick.
BATCH_LEASE_SECONDS = env_float("BATCH_LEASE_SECONDS", 30)
# Replicas write a heartbeat this often; a replica is online while its heartbeat is younger
# than three of these.
BATCH_HEARTBEAT_SECONDS = env_float("BATCH_HEARTBEAT_SECONDS", 5)
# Backoff before retry N (1-based): base * 2 ** (N - 1), capped. D365 documents no backoff for
# "Maximum retries"; we borrow the shape of its transient-SQL retry (5 s, doubling, 5 min cap).
BATCH_RETRY_BACKOFF_SECONDS = env_float("BATCH_RETRY_BACKOFF_SECONDS", 5)
BATCH_RETRY_BACKOFF_MAX_SECONDS = env_float("BATCH_RETRY_BACKOFF_MAX_SECONDS", 300)
# A task without its own time limit is stopped after this long. 6 h: far above any ordinary
# batch run (nightly postings, imports), yet a hung process frees its worker slot the same
# day instead of holding it until someone notices. A task that needs more sets its own limit.
BATCH_TASK_TIME_LIMIT_SECONDS = env_int("BATCH_TASK_TIME_LIMIT_SECONDS", 6 * 3600)
# What one attempt of a process may store (engine/runner.py; lib/text.py cuts with a note):
# characters of its error message, of its traceback, of one log line, and log lines in all
# (past it, one "N lines cut" line). A process that raises a 50 MB error stores 20,000
# characters of it, once.
BATCH_ERROR_MAX_CHARS = env_int("BATCH_ERROR_MAX_CHARS", 20_000)
BATCH_TRACEBACK_MAX_CHARS = env_int("BATCH_TRACEBACK_MAX_CHARS", 100_000)
BATCH_LOG_LINE_MAX_CHARS = env_int("BATCH_LOG_LINE_MAX_CHARS", 10_000)
BATCH_LOG_LINES_PER_ATTEMPT = env_int("BATCH_LOG_LINES_PER_ATTEMPT", 20_000)
# The longest time limit a task run as a Batch user (anyone but a manager) may have, enforced
# when the task is saved and again when it runs: a user's demo.hang holds a worker thread for
# at most this long. 0: no ceiling.
BATCH_USER_MAX_TIME_LIMIT = env_int("BATCH_USER_MAX_TIME_LIMIT", BATCH_TASK_TIME_LIMIT_SECONDS)
if BATCH_USER_MAX_TIME_LIMIT < 0:
    raise ImproperlyConfigured("BATCH_USER_MAX_TIME_LIMIT must be 0 (no ceiling) or seconds.")
# Cancel (or a time limit) asks a running process to stop through ctx.cancel_requested(); one
# still running this long after is aborted: its worker process is killed.
BATCH_CANCEL_GRACE_SECONDS = env_float("BATCH_CANCEL_GRACE_SECONDS", 30)
# Many ready tasks of one queue sent at once share messages, up to this many tasks each (and
# never fewer than 32 messages): a message costs Celery as much CPU as a short task costs the
# engine (engine/batches.py). 1: one message per task.
BATCH_DISPATCH_MAX_TASKS = env_int("BATCH_DISPATCH_MAX_TASKS", 16)
if BATCH_DISPATCH_MAX_TASKS < 1:
    raise ImproperlyConfigured("BATCH_DISPATCH_MAX_TASKS must be 1 or more.")
# A worker process that releases a task of the queue it is serving, while nobody waits in that
# queue, runs it next itself instead of sending it (a chain's hop without the broker), for up
# to this many seconds after the message it took; then its releases go through the queue
# again, so a warm shutdown waits at most this long more. 0: every release is sent.
BATCH_FOLLOW_ON_SECONDS = env_float("BATCH_FOLLOW_ON_SECONDS", 2)
if not 0 <= BATCH_FOLLOW_ON_SECONDS <= 3600:
    raise ImproperlyConfigured("BATCH_FOLLOW_ON_SECONDS must be 0 (off) to 3600 seconds.")
# A ready task whose message has not been picked up this long, while its queue in the broker is
# empty, is dispatched again (the message was lost, e.g. Redis restarted without persistence).
BATCH_REDISPATCH_AFTER_SECONDS = env_float("BATCH_REDISPATCH_AFTER_SECONDS", 30)
# A ready task waiting for a thread has its message sent again one priority step higher every
# this many seconds (priority.py), so Low tasks are never starved by a stream of higher ones.
# 0 turns aging off (strict priority order).
BATCH_PRIORITY_AGING_SECONDS = env_float("BATCH_PRIORITY_AGING_SECONDS", 60)
# Queues every batch server replica consumes besides its batch groups' queues, whatever its
# groups and schedule: the alert deliveries (alerts/outbox.py), so alerts go out with the
# workers ops already run.
BATCH_SERVICE_QUEUES = ["batchadmin.alerts"]
# Modules whose import registers batch processes (add your own, comma-separated).
BATCH_PROCESS_MODULES = [
    "batchadmin.processes.builtin",
    "batchadmin.processes.business",
    "batchadmin.processes.maintenance",
    "batchadmin.djangotasks.process",
    *[m for m in os.environ.get("BATCH_PROCESS_MODULES", "").split(",") if m],
]
# mail.send_document sends only to the e-mail addresses of users of this system and to these
# domains (comma-separated, e.g. "example.com,ops.example.com"; a subdomain is not included).
BATCH_MAIL_ALLOWED_DOMAINS = [
    d.strip().lower()
    for d in os.environ.get("BATCH_MAIL_ALLOWED_DOMAINS", "").split(",")
    if d.strip()
]
# A recurring job whose missed-runs policy is "skip" still starts for an occurrence that passed
# less than this long ago (the tick was busy, a deploy restarted beat); older ones are skipped.
BATCH_RECURRENCE_GRACE_SECONDS = env_float("BATCH_RECURRENCE_GRACE_SECONDS", 60)
# Upper bound of rows each step of one tick handles, so one tick stays short.
BATCH_TICK_LIMIT = env_int("BATCH_TICK_LIMIT", 500)
# The tick gives up on a row lock after this long and leaves the row for the next tick, so a
# worker stopped inside its finish transaction (holding its job's row) never stalls the tick.
BATCH_TICK_LOCK_TIMEOUT_SECONDS = env_float("BATCH_TICK_LOCK_TIMEOUT_SECONDS", 0.5)
# /healthz reports beat as down when its last successful tick is older than this. Beat records
# a tick at most every 5 s, so keep this well above that and above the tick's own interval.
BATCH_BEAT_STALE_SECONDS = env_float("BATCH_BEAT_STALE_SECONDS", 30)
# When set, /metrics answers only requests with "Authorization: Bearer <token>".
BATCH_METRICS_TOKEN = os.environ.get("BATCH_METRICS_TOKEN", "")
# A process adds the attempts it settled to /metrics' counters in Redis at most this often
# (0: at once, one write per attempt). A killed worker loses at most this interval's counts.
BATCH_METRICS_FLUSH_SECONDS = env_float("BATCH_METRICS_FLUSH_SECONDS", 1.0)
# A worker keeps the run-as user of a job and their roles this long for the run-time role
# checks (engine/runner.py); saving a task checks them exactly.
BATCH_RUN_AS_CACHE_SECONDS = env_float("BATCH_RUN_AS_CACHE_SECONDS", 5.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Its banner on every process start and a line per sign-in; lockouts are warnings.
        "axes": {"level": "WARNING"},
    },
}
