"""Gunicorn settings for the gateway: flat, commented, every value from GATEWAY_*.

Start it with ``gunicorn -c gunicorn.conf.py wsgi:app``.
"""

import glob
import importlib.util
import os
import shutil
import sys
import tempfile

import gevent
from gunicorn.workers import ggevent


def _load(name, relative_path):
    """Load one standard-library-only module of the app by its path."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), *relative_path.split("/"))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Modules are loaded by path: importing the app package here would import Flask
# and requests into the master, before gevent has patched the workers.
_settings = _load("gateway_config", "app/config.py").load_config()
_jsonlog = _load("gateway_jsonlog", "app/observability/jsonlog.py")

# Where to listen, e.g. 0.0.0.0:8080 (GATEWAY_BIND).
bind = _settings["GATEWAY_BIND"]

# One worker per core is enough: the work is I/O-bound (GATEWAY_WORKERS).
workers = _settings["GATEWAY_WORKERS"]

# Concurrent connections per worker (GATEWAY_WORKER_CONNECTIONS); the backend
# connection pool is sized to match.
worker_connections = _settings["GATEWAY_WORKER_CONNECTIONS"]

# Never preload: the app must be created after gevent patches each worker, so
# its sockets and connection pool are cooperative and not shared across forks.
preload_app = False

# A gevent worker's heartbeat runs in its own greenlet, so long streams do not
# trip this; it only catches a worker whose event loop is truly stuck.
timeout = 30

# After SIGTERM, let in-flight requests and streams finish for this long.
graceful_timeout = _settings["GATEWAY_GRACEFUL_TIMEOUT"]

# Streams still open this many seconds before graceful_timeout are ended with
# an SSE error event (type shutting_down), so no client sees a silent cut.
drain_margin = min(2.0, graceful_timeout / 4)

# Log level of gunicorn's own messages (GATEWAY_LOG_LEVEL); errors go to stderr.
loglevel = _settings["GATEWAY_LOG_LEVEL"]
errorlog = "-"

# gunicorn's own lines in the gateway's format (GATEWAY_LOG_FORMAT=json|text).
if _settings["GATEWAY_LOG_FORMAT"] == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": _jsonlog.JsonFormatter}},
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

# Connections a worker accepts per turn of its event loop. Gunicorn's gevent
# workers accept one at a time when there are several workers; under load an
# event-loop turn takes tens of milliseconds, so a burst of new clients waited
# seconds in the listen queue (stream-1000 benchmark: TTFT p99 8.7 s at 1,
# 0.9 s at 16). 16 keeps the burst short and still spreads it over workers.
accept_batch = 16

# Idle keep-alive connections are closed after this many seconds, so clients
# that connect and say nothing cannot hold a worker's connection slots.
keepalive = 5


class BatchAcceptServer(ggevent.PyWSGIServer):
    """gevent's WSGI server, accepting ``accept_batch`` connections per loop turn."""

    def set_max_accept(self):
        self.max_accept = accept_batch


class IdleTimeoutHandler(ggevent.PyWSGIHandler):
    """gevent's WSGI handler, closing a connection idle for ``keepalive`` seconds."""

    def read_requestline(self):
        with gevent.Timeout(keepalive, False):
            return super().read_requestline()
        return None

    def log_request(self):
        # The gateway writes its own access line (app.access); gunicorn's would
        # cost about 6% of a request's CPU whenever a log config is set.
        pass


class GatewayWorker(ggevent.GeventPyWSGIWorker):
    """Gunicorn's gevent worker on gevent's own WSGI server (pywsgi).

    pywsgi parses requests and writes chunks with less Python work than
    gunicorn's own parser: about 25% more requests per second on the same
    cores (json-fast benchmark: 1,800 vs 1,450 rps).
    """

    server_class = BatchAcceptServer
    wsgi_handler = IdleTimeoutHandler

    def handle_exit(self, sig, frame):
        """Drain on SIGTERM: stop accepting, and end streams still open at the deadline."""
        super().handle_exit(sig, frame)
        gevent.spawn(self._end_streams_before_kill)

    def _end_streams_before_kill(self):
        # Streams still running this close to graceful_timeout would be cut by
        # the master's SIGKILL: end them with an SSE error event instead, and
        # stop their generations upstream.
        gevent.sleep(max(0.0, graceful_timeout - drain_margin))
        from app.backend.base import interrupt_all
        from app.errors import ShuttingDown

        ended = interrupt_all(ShuttingDown("The gateway is shutting down and ended this stream; "
                                           "retry the request."))
        if ended:
            self.log.warning("graceful timeout: ended %d stream(s) with an error event", ended)


# gevent: each connection is a greenlet, so one worker holds thousands of
# streams waiting on the GPU without a thread each.
worker_class = GatewayWorker
