"""Gunicorn settings for the gateway: flat, commented, every value from GATEWAY_*.

Start it with ``gunicorn -c gunicorn.conf.py wsgi:app``.
"""

import glob
import os
import shutil
import tempfile

# Only the settings, the log formatter and the worker class: none of them
# imports Flask or requests, which must not load in the master before gevent
# has patched each worker.
from flask_inference_gateway.observability.jsonlog import JsonFormatter
from flask_inference_gateway.settings import Settings

_settings = Settings.from_environ()

# Where to listen, e.g. 0.0.0.0:8080 (GATEWAY_BIND).
bind = _settings.bind

# One worker per core is enough: the work is I/O-bound (GATEWAY_WORKERS).
workers = _settings.workers

# Concurrent connections per worker (GATEWAY_WORKER_CONNECTIONS); the backend
# connection pool is sized to match.
worker_connections = _settings.worker_connections

# Never preload: the app must be created after gevent patches each worker, so
# its sockets and connection pool are cooperative and not shared across forks.
preload_app = False

# A gevent worker's heartbeat runs in its own greenlet, so long streams do not
# trip this; it only catches a worker whose event loop is truly stuck.
timeout = 30

# After SIGTERM, let in-flight requests and streams finish for this long.
graceful_timeout = _settings.graceful_timeout

# Streams still open shortly before graceful_timeout (a quarter of it, at most
# 2 s) are ended with an error event (type shutting_down), so no client sees
# a silent cut.

# Log level of gunicorn's own messages (GATEWAY_LOG_LEVEL); errors go to stderr.
loglevel = _settings.log_level
errorlog = "-"

# gunicorn's own lines in the gateway's format (GATEWAY_LOG_FORMAT=json|text).
if _settings.log_format == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "loggers": {"gunicorn.error": {"level": loglevel.upper(), "handlers": ["stderr"],
                                       "propagate": False}},
        "root": {"level": "WARNING", "handlers": []},
    }

# No per-request access log line here: the gateway logs requests itself.
accesslog = None

# Prometheus multiprocess mode: each worker writes its samples under this
# folder and /metrics merges them. Set before any worker imports
# prometheus_client; emptied when gunicorn starts.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir
else:
    _own_metrics_dir = None


def on_starting(server):
    """Empty the metrics folder, so counts start at zero with the gateway."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def on_exit(server):
    """Remove the metrics folder if this gunicorn created it."""
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    """Drop a dead worker's gauges (in-flight requests and streams) from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# No control socket: the gateway is driven by signals, and several instances on
# one machine would otherwise contend for the same socket path.
control_socket_disable = True

# Large enough for a burst of new connections while workers are busy.
backlog = 2048

# Idle keep-alive connections are closed after this many seconds, so clients
# that connect and say nothing cannot hold a worker's connection slots. The
# gateway's worker also gives a request's head this long to arrive once begun,
# and each wait for more of its body as long (408 past either).
keepalive = 5

# gevent: each connection is a greenlet, so one worker holds thousands of
# streams waiting on the GPU without a thread each. The class batches accepts,
# closes idle connections and drains streams on SIGTERM (see its module).
worker_class = "flask_inference_gateway.worker.GatewayWorker"
