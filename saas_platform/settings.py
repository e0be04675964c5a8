"""The one settings module. Every value that differs between machines comes from the environment.

Unset DATABASE_URL, REDIS_URL and CELERY_BROKER_URL give the embedded default (SQLite, in-process
cache and limiter, eager Celery); setting them gives the production shape. README.md lists them all.
"""

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from saas_platform.addresses import parse_networks
from saas_platform.env import env_bool, env_float, env_int, env_list, env_str
from saas_platform.redis_clients import is_cluster
from saas_platform.site import parse_site_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = env_bool("DJANGO_DEBUG", default=False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required (or set DJANGO_DEBUG=1 for development)")
    SECRET_KEY = "insecure-development-key-only-used-with-DJANGO_DEBUG"  # noqa: S105 # nosec B105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])

# --- Proxies: whose X-Forwarded-For and X-Forwarded-Proto are believed (addresses or CIDRs; none
# by default, so a client's own forwarded headers change nothing). saas_platform/addresses.py.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
TRUSTED_PROXY_NETWORKS = parse_networks("TRUSTED_PROXIES", TRUSTED_PROXIES)
if env_str("TRUST_X_FORWARDED_PROTO"):
    raise ImproperlyConfigured(
        "TRUST_X_FORWARDED_PROTO is no longer read: set TRUSTED_PROXIES to the proxy's address, "
        "whose X-Forwarded-Proto is then believed"
    )

# --- HTTPS. Off by default so that `make run` on http://127.0.0.1 can sign people in; HTTPS=1
# (behind TLS) redirects plain HTTP, sends HSTS and keeps the session and CSRF cookies off plain
# HTTP. Behind a proxy that ends TLS, its X-Forwarded-Proto makes a request secure when the
# proxy is one of TRUSTED_PROXIES (the ASGI scheme, which Django reads: no
# SECURE_PROXY_SSL_HEADER, which would believe the header from anyone).
HTTPS = env_bool("HTTPS", default=False)
SECURE_SSL_REDIRECT = HTTPS
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # load balancers probe over plain HTTP
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=HTTPS)
# Origins (https://portal.example.com) allowed to POST forms when they differ from the host.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000, minimum=1)
# The address people reach the site at, for the links in emails (saas_platform/site.py); never
# the request's Host. `check --deploy` warns while it is unset.
SITE_URL_IS_SET = bool(env_str("SITE_URL"))
_served_at = f"[{HOST}]" if ":" in HOST else HOST
SITE_URL = parse_site_url(
    "SITE_URL", env_str("SITE_URL") or f"{'https' if HTTPS else 'http'}://{_served_at}:{PORT}"
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "axes",
    "django_htmx",
    # The project package itself: shared templates, template tags (charts) and static files.
    "saas_platform",
    # The audit log, which every app's services write to.
    "audit",
    "tenants",
    "gateway",
    "models_mgmt",
    "billing",
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every page (SECURE_CSP below).
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The request's user (or API key) is who the audit log names for what the request changes.
    "saas_platform.actors.ActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # request.htmx, for views that answer an in-place update with a fragment.
    "django_htmx.middleware.HtmxMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Counts failed sign-ins (portal and admin) and locks out after LOGIN_FAILURE_LIMIT.
    "axes.middleware.AxesMiddleware",
]

# --- Content-Security-Policy of the portal's and the admin's pages (Django's own middleware,
# which django-csp became): scripts, styles, images and requests from this site only, nothing
# framed, no plugins. Every script is a file (htmx, Chart.js, ours; chart data is JSON in
# <script type="application/json">, which is not run), so no inline script ever runs: an
# injected one is refused. Inline styles are allowed: htmx adds a <style> for its request
# indicators, and meters and bars set their widths in style attributes; styles cannot run code.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
    "font-src": [CSP.SELF],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

ROOT_URLCONF = "saas_platform.urls"
ASGI_APPLICATION = "saas_platform.asgi.application"
WSGI_APPLICATION = "saas_platform.wsgi.application"

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

# --- Database: PostgreSQL in production and tests, a SQLite file in the embedded default.
DATABASE_URL = env_str("DATABASE_URL")
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
    if DATABASE_URL
    else {"ENGINE": "django.db.backends.sqlite3", "NAME": VAR_DIR / "db.sqlite3"}
}
if not DATABASE_URL:
    VAR_DIR.mkdir(exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: the shared cache (key lookups, last-used throttling), the limiter state, spend,
# live routing, node locks, refusal counts and the usage stream. REDIS_URL names one Redis
# (redis://host:port/db) or a Redis Cluster (redis+cluster://host:port, any one node); every
# client comes from saas_platform/redis_clients.py.
REDIS_URL = env_str("REDIS_URL")
REDIS_IS_CLUSTER = is_cluster(REDIS_URL)
if REDIS_IS_CLUSTER:
    # django-redis does not do cluster: Django's own Redis backend on the cluster client.
    # A cluster that cannot be reached is a cache miss there too.
    CACHES = {
        "default": {
            "BACKEND": "saas_platform.redis_cache.ClusterRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "saas"),
        }
    }
elif REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "saas"),
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
        }
    }
    # A cache outage degrades key lookups to the database instead of failing requests;
    # admission decides on its own (fail closed by default) when Redis is gone.
    DJANGO_REDIS_IGNORE_EXCEPTIONS = True
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery: without a broker, tasks run eagerly in the calling process. The broker is its own
# setting (one Redis or RabbitMQ: kombu does not do Redis Cluster).
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 600, minimum=1)
# No caller reads a task's result. Celery's Redis result backend does not do cluster either:
# on a cluster there is none unless CELERY_RESULT_BACKEND names one.
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND") or (
    None if REDIS_IS_CLUSTER else REDIS_URL or None
)

# --- Celery beat: its schedule and a lock live in one Redis (celery-redbeat), so however many
# workers start with -B, one beat sends the schedule, and no schedule file is written. redbeat
# needs one Redis, not a cluster: REDBEAT_REDIS_URL, else the broker's Redis, else REDIS_URL
# when it names one Redis. Without any (a RabbitMQ broker and no Redis) the beat keeps its
# schedule in memory, rebuilt from this file at each start, with no lock.
REDBEAT_REDIS_URL = env_str("REDBEAT_REDIS_URL") or next(
    (url for url in (CELERY_BROKER_URL, REDIS_URL) if url.startswith(("redis://", "rediss://"))),
    "",
)
if REDBEAT_REDIS_URL and not REDBEAT_REDIS_URL.startswith(("redis://", "rediss://")):
    raise ImproperlyConfigured(
        f"REDBEAT_REDIS_URL must name one Redis (redis:// or rediss://), got {REDBEAT_REDIS_URL!r}"
    )
CELERY_BEAT_SCHEDULER = (
    "saas_platform.beat:LockedRedisScheduler" if REDBEAT_REDIS_URL else "celery.beat:Scheduler"
)
CELERY_REDBEAT_REDIS_URL = REDBEAT_REDIS_URL or None
CELERY_REDBEAT_KEY_PREFIX = env_str("REDBEAT_KEY_PREFIX", "redbeat:")
# The beat that holds the lock renews it every tick (a tick at least every 5 s); a stopped beat
# releases it at once, a killed one's lapses after BEAT_LOCK_TIMEOUT_SECONDS. The others try
# to take it every 5 s.
CELERY_BEAT_MAX_LOOP_INTERVAL = 5
CELERY_REDBEAT_LOCK_TIMEOUT = env_int("BEAT_LOCK_TIMEOUT_SECONDS", 30, minimum=10)
CELERY_BEAT_SCHEDULE = {
    # Move usage events from the Redis stream into the ledger.
    "ledger-drain": {"task": "billing.tasks.drain_usage_events", "schedule": 1.0},
    # Reset each tenant's running spend from the ledger, the truth.
    "spend-reconcile": {"task": "billing.tasks.reconcile_spend", "schedule": 300.0},
    # Lapse what is left of expired credit grants; set the credit counters from the ledger.
    "credits-lapse": {"task": "billing.tasks.lapse_expired_credits", "schedule": 3600.0},
    "credits-reconcile": {"task": "billing.tasks.reconcile_credits", "schedule": 300.0},
    # Close last month's invoices once the grace period for late events has passed.
    "invoices-close-due": {"task": "billing.tasks.close_due_invoices", "schedule": 3600.0},
    # Each node's heartbeat and idle eviction, on its own queue.
    "node-ticks": {"task": "models_mgmt.tasks.schedule_node_ticks", "schedule": 15.0},
    # Email the operators when the ledger falls behind the usage stream, and when it catches up.
    "ledger-lag-watch": {"task": "billing.tasks.watch_ledger_lag", "schedule": 15.0},
    # Webhook deliveries due (retries, lost tasks) and spend-alert emails not sent yet.
    "events-sweep": {"task": "billing.tasks.sweep_events", "schedule": 30.0},
    # apikey.expiring events for keys that expire in WEBHOOK_KEY_EXPIRY_NOTICE_DAYS.
    "apikeys-expiring": {"task": "billing.tasks.notify_expiring_keys", "schedule": 86400.0},
    # Delete audit rows past AUDIT_RETENTION_DAYS.
    "audit-prune": {"task": "audit.tasks.prune_audit_log", "schedule": 3600.0},
}

# --- The audit log: how long its rows are kept (audit/services.py, pruned by beat).
AUDIT_RETENTION_DAYS = env_int("AUDIT_RETENTION_DAYS", 400, minimum=1)

# --- Usage events: optional NDJSON file each event is appended to, and recorder classes.
USAGE_NDJSON_PATH = env_str("USAGE_NDJSON_PATH")
# The ledger recorder: through a Redis stream with REDIS_URL, else straight to the database.
USAGE_RECORDERS = env_list("USAGE_RECORDERS", ["billing.ledger.LedgerRecorder"])
# The Kafka usage stream (billing.kafka.KafkaRecorder, when USAGE_RECORDERS names it): fed by
# the ledger's drain once events are stored. SASL/TLS settings are passed to librdkafka as set.
KAFKA_BOOTSTRAP_SERVERS = env_str("KAFKA_BOOTSTRAP_SERVERS")
KAFKA_USAGE_TOPIC = env_str("KAFKA_USAGE_TOPIC", "usage-events")
KAFKA_DELIVERY_TIMEOUT_SECONDS = env_float("KAFKA_DELIVERY_TIMEOUT_SECONDS", 10.0, minimum=1.0)
KAFKA_SECURITY_PROTOCOL = env_str("KAFKA_SECURITY_PROTOCOL")
KAFKA_SASL_MECHANISM = env_str("KAFKA_SASL_MECHANISM")
KAFKA_SASL_USERNAME = env_str("KAFKA_SASL_USERNAME")
KAFKA_SASL_PASSWORD = env_str("KAFKA_SASL_PASSWORD")
KAFKA_SSL_CA_LOCATION = env_str("KAFKA_SSL_CA_LOCATION")
if "billing.kafka.KafkaRecorder" in USAGE_RECORDERS and not (REDIS_URL and KAFKA_BOOTSTRAP_SERVERS):
    # It is fed by the ledger's drain of the Redis stream: without Redis nothing would feed it.
    raise ImproperlyConfigured(
        "USAGE_RECORDERS names billing.kafka.KafkaRecorder: set REDIS_URL (the ledger's stream "
        "feeds it) and KAFKA_BOOTSTRAP_SERVERS"
    )

# --- Model management.
# Where each node's worker keeps the records of the engine processes it started.
NODE_STATE_DIR = env_str("NODE_STATE_DIR", str(VAR_DIR / "nodes"))
# This worker's node (it consumes the Celery queue node.<NODE_NAME>); unset on gateways.
NODE_NAME = env_str("NODE_NAME")
NODE_HEARTBEAT_TIMEOUT_SECONDS = env_int("NODE_HEARTBEAT_TIMEOUT_SECONDS", 60, minimum=1)
# A model just loaded is not evicted for this long unless nothing else can make room.
MIN_RESIDENCY_SECONDS = env_int("MIN_RESIDENCY_SECONDS", 60, minimum=0)
# How long an unload waits for requests in flight before stopping the engine anyway.
DRAIN_TIMEOUT_SECONDS = env_int("DRAIN_TIMEOUT_SECONDS", 120, minimum=0)
# How long a request for a model that is not loaded anywhere waits for a load (then 503).
ROUTING_LOAD_WAIT_SECONDS = env_int("ROUTING_LOAD_WAIT_SECONDS", 120, minimum=0)

# --- Billing.
BILLING_CURRENCY = env_str("BILLING_CURRENCY", "USD").upper()
BILLING_OPERATOR_NAME = env_str("BILLING_OPERATOR_NAME", "Inference Platform Operator")
BILLING_OPERATOR_ADDRESS = env_str("BILLING_OPERATOR_ADDRESS", "")
# Days after a month's end before its invoices are closed, so late usage events still count.
INVOICE_GRACE_DAYS = env_int("INVOICE_GRACE_DAYS", 3, minimum=0)
# Spend alerts: percentages of the monthly budget, each emailed (and sent to the tenant's
# webhook) once a month.
try:
    SPEND_ALERT_THRESHOLDS = sorted(
        {int(v) for v in env_list("SPEND_ALERT_THRESHOLDS", ["50", "80", "100"])}
    )
except ValueError:
    raise ImproperlyConfigured(
        "SPEND_ALERT_THRESHOLDS must be whole percentages: 50,80,100"
    ) from None
# A prepaid tenant is alerted (email and credits.balance_low) when its credit balance falls to
# each of these amounts of BILLING_CURRENCY, once until its next grant.
try:
    CREDIT_BALANCE_ALERTS = sorted(
        {int(v) for v in env_list("CREDIT_BALANCE_ALERTS", ["10", "1"])}, reverse=True
    )
except ValueError:
    raise ImproperlyConfigured(
        "CREDIT_BALANCE_ALERTS must be whole amounts of the currency: 10,1"
    ) from None
if any(not 1 <= amount <= 32767 for amount in CREDIT_BALANCE_ALERTS):
    raise ImproperlyConfigured("CREDIT_BALANCE_ALERTS must be amounts from 1 to 32767")
# Webhooks to the tenants' own endpoints. Plain http and private or loopback receivers only
# for development and tests: the URL is the tenant's input, and the platform connects to it.
WEBHOOK_ALLOW_HTTP = env_bool("WEBHOOK_ALLOW_HTTP", default=False)
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", default=False)
# A CA bundle receivers' certificates are checked against instead of the public CAs (a
# development CA); empty: the public ones.
WEBHOOK_CA_BUNDLE = env_str("WEBHOOK_CA_BUNDLE")
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
# Retries double from this delay (at most an hour apart) until WEBHOOK_RETRY_HOURS have passed.
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 30.0, minimum=0.01)
WEBHOOK_RETRY_HOURS = env_int("WEBHOOK_RETRY_HOURS", 24, minimum=1)
# An endpoint whose deliveries fail this long is disabled and its owners emailed.
WEBHOOK_DISABLE_AFTER_DAYS = env_int("WEBHOOK_DISABLE_AFTER_DAYS", 3, minimum=1)
WEBHOOK_KEY_EXPIRY_NOTICE_DAYS = env_int("WEBHOOK_KEY_EXPIRY_NOTICE_DAYS", 7, minimum=1)
# Events a ledger batch stores at once, and how long an unacknowledged one waits before
# another worker takes it over (its first worker presumably died).
# 2,000: 1.14x the events/s of 500 in the ingest bench; past ~5,000 little more is gained.
LEDGER_BATCH_SIZE = env_int("LEDGER_BATCH_SIZE", 2000, minimum=1)
LEDGER_RECLAIM_IDLE_SECONDS = env_int("LEDGER_RECLAIM_IDLE_SECONDS", 30, minimum=0)
# Past this age of the oldest unstored usage event, /readyz answers 503 and the operators are
# emailed (once, and once more when it is back under).
LEDGER_LAG_ALERT_SECONDS = env_int("LEDGER_LAG_ALERT_SECONDS", 60, minimum=1)

# --- The gateway.
# Concurrency leases expire this long after their last renewal (a killed process frees its
# slots then); running requests renew theirs every third of it.
ADMISSION_LEASE_SECONDS = env_int("ADMISSION_LEASE_SECONDS", 15, minimum=1)
# A request for a model at its engines' capacity (max_concurrent_per_replica) waits in that
# model's fair queue this long at most, then gets 503 engine_overloaded. Its place in the queue
# and its engine slot are leases of ADMISSION_LEASE_SECONDS, so a dead gateway leaves neither.
QUEUE_MAX_WAIT_SECONDS = env_float("QUEUE_MAX_WAIT_SECONDS", 30.0, minimum=0.0)
# A process model with max_replicas > 1 gets one more replica (on another node with room)
# once a request has waited this long in its queue.
SCALE_OUT_AFTER_SECONDS = env_float("SCALE_OUT_AFTER_SECONDS", 10.0, minimum=0.0)
# What the admin's model and node pages show of the queues (models_mgmt imports no gateway).
MODEL_QUEUE_STATS = "gateway.fair_queue.queue_stats"
# Without Redis the gateway refuses (503) by default; 1 admits without limits instead.
ADMISSION_FAIL_OPEN = env_bool("ADMISSION_FAIL_OPEN", default=False)
# Reserved for a request without max_tokens; the real count is reconciled at the end.
DEFAULT_MAX_TOKENS_RESERVATION = env_int("DEFAULT_MAX_TOKENS_RESERVATION", 1024, minimum=1)
# max_tokens above this is refused as a bad request.
MAX_TOKENS_LIMIT = env_int("MAX_TOKENS_LIMIT", 131072, minimum=1)
# Largest request body the inference endpoints take (413 above it).
INFERENCE_MAX_BODY_BYTES = env_int("INFERENCE_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
# Largest request body every other path takes (the portal's and admin's forms, /api/, /healthz):
# 413 from the declared length before anything is read, or once a chunked body passes it
# (saas_platform/body_guard.py). Django's own limits match, so what passes is held in memory,
# never spooled to disk.
REQUEST_MAX_BODY_BYTES = env_int("REQUEST_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_MAX_BODY_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = REQUEST_MAX_BODY_BYTES
# Seconds a client has to send its whole request body (408 after), so a slow one cannot hold a
# connection and its buffer for ever (saas_platform/body_guard.py).
REQUEST_BODY_TIMEOUT_SECONDS = env_int("REQUEST_BODY_TIMEOUT_SECONDS", 60, minimum=1)
# Seconds a connection has to deliver a complete request head, from when it opens and from the
# end of each response (so also the keep-alive idle time); then it is closed
# (saas_platform/http_protocol.py). A client sending nothing, or a header line now and then,
# cannot hold a connection.
REQUEST_HEADER_TIMEOUT_SECONDS = env_int("REQUEST_HEADER_TIMEOUT_SECONDS", 10, minimum=1)
# Connections one server process serves at once (requests past it get 503 with Retry-After).
# Long streams hold theirs for minutes: room for a few thousand per process.
MAX_CONNECTIONS_PER_WORKER = env_int("MAX_CONNECTIONS_PER_WORKER", 4096, minimum=1)
# Upstream engines: one pooled async HTTP client per process.
UPSTREAM_CONNECT_TIMEOUT = env_int("UPSTREAM_CONNECT_TIMEOUT", 5, minimum=1)
UPSTREAM_READ_TIMEOUT = env_int("UPSTREAM_READ_TIMEOUT", 120, minimum=1)
UPSTREAM_TOTAL_TIMEOUT = env_int("UPSTREAM_TOTAL_TIMEOUT", 900, minimum=1)
# A streamed response's chunk the client has not taken within this many seconds (it stopped
# reading) ends the response as a 499, billed for what was sent.
RESPONSE_WRITE_TIMEOUT_SECONDS = env_int("RESPONSE_WRITE_TIMEOUT_SECONDS", 30, minimum=1)
UPSTREAM_MAX_CONNECTIONS = env_int("UPSTREAM_MAX_CONNECTIONS", 1000, minimum=1)
# How long each server process keeps the model catalog before reading it again.
CATALOG_CACHE_SECONDS = env_int("CATALOG_CACHE_SECONDS", 5, minimum=0)
# Threads the local engine's CPU model uses in each server process (0: llama.cpp's default).
LOCAL_ENGINE_THREADS = env_int("LOCAL_ENGINE_THREADS", 0, minimum=0)

# Addresses (or CIDRs) that may read /metrics without signing in as staff, and a bearer token
# they must also present when it is set.
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])
# Figures of the whole platform that /metrics reads when it is scraped, and the checks of
# GET /readyz beyond the database and Redis: named here, since the project package imports
# no app (saas_platform/metrics.py, health.py).
METRICS_COLLECTORS = [
    "billing.ledger_lag.ledger_lag_collector",
    "models_mgmt.node_metrics.node_memory_collector",
    "gateway.fair_queue.queue_depth_collector",
]
READINESS_CHECKS = {"ledger": "billing.ledger_lag.ledger_readiness"}
METRICS_ALLOWED_NETWORKS = parse_networks("METRICS_ALLOWED_IPS", METRICS_ALLOWED_IPS)
METRICS_TOKEN = env_str("METRICS_TOKEN")

# --- Tenants.
# What the tenants' model allow lists are checked against: a function from model ids to those
# the catalog does not know. Named here, not imported: tenants and the catalog's app
# (models_mgmt) do not import each other.
TENANT_MODEL_CATALOG = "models_mgmt.selectors.unknown_model_ids"
TENANT_MODEL_IDS = "models_mgmt.selectors.enabled_model_ids"
# Each key's spend this month (`apikey list`), from billing's ledger, named for the same reason.
TENANT_KEY_SPEND = "billing.selectors.key_spend_this_month"

# --- API keys.
# Requests with a wrong key one client address may send in a minute (then 429 until the minute
# ends): guessing keys costs a lookup each, and valid-looking keys are free to make.
AUTH_FAILURES_PER_MINUTE = env_int("AUTH_FAILURES_PER_MINUTE", 30, minimum=1)
# How long a key lookup is cached; revocation and suspension also clear it at once.
APIKEY_CACHE_SECONDS = env_int("APIKEY_CACHE_SECONDS", 5, minimum=0)
# How long each gateway process keeps a key it has just authenticated in its own memory (no
# round trip at all); revocation, suspension and quota changes reach every process within it.
APIKEY_PROCESS_CACHE_SECONDS = env_float("APIKEY_PROCESS_CACHE_SECONDS", 1.0, minimum=0)
# How long a rotated-out key keeps working, so deployed clients can switch without downtime.
APIKEY_ROTATION_GRACE_SECONDS = env_int("APIKEY_ROTATION_GRACE_SECONDS", 24 * 3600, minimum=0)
# last_used_at is written at most once per this many seconds per key.
APIKEY_LAST_USED_INTERVAL_SECONDS = env_int("APIKEY_LAST_USED_INTERVAL_SECONDS", 60, minimum=1)
# Requests a tenant may make to /api/keys per minute (portal/api.py), all its keys together.
KEYS_API_REQUESTS_PER_MINUTE = env_int("KEYS_API_REQUESTS_PER_MINUTE", 120, minimum=1)

# --- Sign-in (the portal at /portal/ and the admin).
LOGIN_URL = "portal:login"
LOGIN_REDIRECT_URL = "portal:overview"
LOGOUT_REDIRECT_URL = "portal:login"
AUTHENTICATION_BACKENDS = [
    # django-axes first, so a locked-out username/address pair is refused before the password
    # is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed sign-ins from one address for one username before it is locked out, and for how long.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# The address as TRUSTED_PROXIES decides it, never a header of the client's choosing.
AXES_CLIENT_IP_CALLABLE = "saas_platform.addresses.client_address"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "portal/locked_out.html"
# django-axes' database handler, which also writes sign-ins, failures and lockouts to the audit
# log (audit/signins.py).
AXES_HANDLER = "audit.signins.AuditedAxesHandler"
# Its start-up banner would land on every management command's stderr, where scripts expect
# only our one-line errors; lockouts are still logged.
AXES_VERBOSE = False
# Attempts are kept in the database (django-axes' default), where staff see and clear lockouts
# in the admin; `manage.py axes_reset` clears them all.

# --- Single sign-on (OpenID Connect), through mozilla-django-oidc (tenants/sso.py): off while
# OIDC_ISSUER is unset. The provider's endpoints come from its discovery document
# (OIDC_ISSUER/.well-known/openid-configuration), read at the first sign-in, not here.
OIDC_ISSUER = env_str("OIDC_ISSUER").rstrip("/")
SSO_ENABLED = bool(OIDC_ISSUER)
OIDC_CLIENT_ID = env_str("OIDC_CLIENT_ID")
OIDC_CLIENT_SECRET = env_str("OIDC_CLIENT_SECRET")
# The claim whose values (tenant:<slug>:owner|member) are the person's memberships, and the
# value in it that makes them staff (the operator's admin); unset: SSO never changes staff.
OIDC_TENANTS_CLAIM = env_str("OIDC_TENANTS_CLAIM", "groups")
OIDC_STAFF_GROUP = env_str("OIDC_STAFF_GROUP")
OIDC_SCOPES = env_str("OIDC_SCOPES", "openid email groups")
if SSO_ENABLED:
    if not (OIDC_CLIENT_ID and OIDC_CLIENT_SECRET):
        raise ImproperlyConfigured("OIDC_ISSUER is set: OIDC_CLIENT_ID and OIDC_CLIENT_SECRET too")
    if not OIDC_ISSUER.startswith(("https://", "http://")):
        raise ImproperlyConfigured(f"OIDC_ISSUER must be an http(s) URL, got {OIDC_ISSUER!r}")
    AUTHENTICATION_BACKENDS.append("tenants.sso.SsoBackend")
    # Sign-out is a form whose answer redirects to the provider's end_session_endpoint, which
    # the browser follows only if form-action allows the provider's origin.
    _issuer = urlsplit(OIDC_ISSUER)
    SECURE_CSP["form-action"].append(f"{_issuer.scheme}://{_issuer.netloc}")
# mozilla-django-oidc's own settings, from ours. State, nonce and the PKCE verifier are its
# checks; the ID token's signature is checked against the provider's JWKS (RS256 unless
# OIDC_SIGN_ALGO says otherwise).
OIDC_RP_CLIENT_ID = OIDC_CLIENT_ID
OIDC_RP_CLIENT_SECRET = OIDC_CLIENT_SECRET
OIDC_RP_SCOPES = OIDC_SCOPES
OIDC_RP_SIGN_ALGO = env_str("OIDC_SIGN_ALGO", "RS256")
OIDC_USE_PKCE = True
OIDC_USE_NONCE = True
OIDC_TOKEN_USE_BASIC_AUTH = True
# The ID token is kept in the session for the provider's sign-out (id_token_hint).
OIDC_STORE_ID_TOKEN = True
OIDC_TIMEOUT = env_int("OIDC_TIMEOUT_SECONDS", 10, minimum=1)
OIDC_AUTHENTICATION_CALLBACK_URL = "portal:sso_callback"
OIDC_USERNAME_ALGO = "tenants.sso.username_for"

# --- Email (password resets, member invitations). The emails carry links that sign a person in:
# printed on the console, they would land in the server's log. So the console is the default
# only with DJANGO_DEBUG=1 (`make run` sets it explicitly); otherwise EMAIL_BACKEND must say.
_CONSOLE_MAIL = "django.core.mail.backends.console.EmailBackend"
_mail_backend = env_str("EMAIL_BACKEND")
if not _mail_backend:
    if not DEBUG:
        raise ImproperlyConfigured(
            "EMAIL_BACKEND is required unless DJANGO_DEBUG=1: password-reset and invitation "
            "links must not go to the server's log. Use django.core.mail.backends.smtp."
            f"EmailBackend (with EMAIL_HOST...), or {_CONSOLE_MAIL} if that is really meant"
        )
    _mail_backend = _CONSOLE_MAIL
if _mail_backend.endswith("smtp.EmailBackend"):
    _mail_options = {
        "host": env_str("EMAIL_HOST", "localhost"),
        "port": env_int("EMAIL_PORT", 25, minimum=1),
        "username": env_str("EMAIL_HOST_USER"),
        "password": env_str("EMAIL_HOST_PASSWORD"),
        "use_tls": env_bool("EMAIL_USE_TLS", default=False),
    }
elif _mail_backend.endswith("filebased.EmailBackend"):  # one file per message, in a folder
    _mail_options = {"file_path": env_str("EMAIL_FILE_PATH", str(VAR_DIR / "emails"))}
else:
    _mail_options = {}
MAILERS = {"default": {"BACKEND": _mail_backend, "OPTIONS": _mail_options}}
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "no-reply@localhost")
# Who is emailed when the platform needs an operator (the ledger falling behind, and back).
OPERATOR_EMAILS = env_list("OPERATOR_EMAILS", [])
# How long a password-reset or invitation link works.
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT", 3 * 24 * 3600, minimum=60)

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

STATIC_URL = "static/"
# ServeStatic (WhiteNoise with async support, so the gateway's async views stay async) serves
# the admin's static files straight from the apps: no collectstatic step is needed.
SERVESTATIC_USE_FINDERS = True
# Front-end libraries come from npm (package.json; `make` runs `npm ci`), served from
# node_modules under a stable prefix, never committed.
STATICFILES_DIRS = [
    ("vendor/htmx", BASE_DIR / "node_modules" / "htmx.org" / "dist"),
    ("vendor/chart.js", BASE_DIR / "node_modules" / "chart.js" / "dist"),
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # DRF serves the management API alone: its errors (405, a bad format, ...) in OpenAI's shape
    # on every view, the public schema's included.
    "EXCEPTION_HANDLER": "tenants.api_auth.openai_exception_handler",
}
# The management API's OpenAPI schema, served at /api/schema (billing/api_schema.py).
SPECTACULAR_SETTINGS = {
    "TITLE": "Tenant management API",
    "DESCRIPTION": "Invoices, usage and API keys of the tenant whose API key is presented (a key "
    "of scope manage for /api/keys). The inference API (/v1/) has its own document, "
    "gateway/openapi.yaml.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
