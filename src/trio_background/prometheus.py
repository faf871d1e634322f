"""Prometheus metrics for background tasks (extra ``prometheus``).

Two halves, registered together on one registry:

- :class:`TaskMetrics` is a task observer: every task that reaches its final
  state counts once in ``trio_background_tasks_total{state}``, and adds what
  its record knows to the histograms (how long it ran, how many attempts it
  took, how long it waited after the response, how far it overran the
  shutdown deadline); a task that failed by its policy's timeout also counts
  in ``trio_background_task_timeouts_total``.
- A collector reads :meth:`Supervisor.statistics` when the registry is
  scraped, for the gauges: batches running, threads busy.

:meth:`TaskMetrics.app` (or :func:`metrics_app`, for a registry) is an ASGI
app that serves the metrics. Example::

    from trio_background.prometheus import TaskMetrics

    metrics = TaskMetrics()
    app = FastAPI()
    app.add_middleware(BackgroundTasksMiddleware, observers=[metrics])
    app.add_route("/metrics", metrics.app(), include_in_schema=False)

The page answers ``/metrics`` itself (``app.mount`` would answer it with a
redirect to ``/metrics/``). Served behind the middleware, it also wires
what was left out: a page whose metrics are not an observer of the app's
supervisor registers them there at its first scrape (and logs, and says in
the page, that the tasks before it were not counted); a page with no
:class:`TaskMetrics` on its registry says so.

With several worker processes (``--workers``), prometheus_client's
multiprocess mode applies: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory before the workers start. Counters and histograms then go to files
there, each worker writes its own gauges there too (refreshed every second),
and :func:`metrics_app` serves the sum over the workers from any of them.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.multiprocess import MultiProcessCollector
except ImportError as exc:
    raise ImportError(
        "trio_background.prometheus needs prometheus_client: "
        "pip install 'trio-background[prometheus]'"
    ) from exc

import trio

from ._asgi import EXCHANGE_KEY
from ._middleware import from_scope, supervisor_from_scope
from ._observe import TaskObserver
from ._tasks import TaskState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from contextlib import AbstractContextManager

    from prometheus_client.metrics_core import Metric

    from ._asgi import Receive, Scope, Send
    from ._records import TaskRecord
    from ._supervisor import Supervisor
    from ._tasks import BackgroundTask

__all__ = ["MetricsApp", "TaskMetrics", "metrics_app"]

logger = logging.getLogger("trio_background")

DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip
WAIT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
OVERRUN_BUCKETS: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ATTEMPT_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20)

# How the runner words a policy's timeout (``@trio_background.task(timeout=...)``).
_TIMED_OUT = "TimeoutError: timed out after "

# How often a worker writes its gauges in multiprocess mode.
MULTIPROCESS_REFRESH = 1.0

_BATCHES = "trio_background_batches_running"
_BATCHES_HELP = "Batches of background tasks in flight (running, or waiting for their response)."
_THREADS = "trio_background_threads_busy"
_THREADS_HELP = "Worker threads running sync background tasks now."


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes its values to files (``PROMETHEUS_MULTIPROC_DIR``)."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ


class _Supervisors:
    """The supervisors whose statistics the gauges add up (weakly held)."""

    def __init__(self) -> None:
        self._known: weakref.WeakSet[Supervisor] = weakref.WeakSet()

    def add(self, supervisor: Supervisor) -> None:
        self._known.add(supervisor)

    def __contains__(self, supervisor: Supervisor) -> bool:
        return supervisor in self._known

    def totals(self) -> tuple[int, int] | None:
        """``(batches_running, threads_busy)`` summed, or None outside a trio run."""
        batches = threads = 0
        try:
            for supervisor in list(self._known):
                statistics = supervisor.statistics()
                batches += statistics.batches_running
                threads += statistics.threads_busy
        except RuntimeError:
            # Scraped from outside trio (prometheus_client's own HTTP server
            # thread): the supervisors' state lives in the trio run.
            return None
        return batches, threads


class _GaugeCollector:
    """Reads the supervisors when the registry is collected."""

    def __init__(self, supervisors: _Supervisors) -> None:
        self._supervisors = supervisors

    def describe(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily(_BATCHES, _BATCHES_HELP),
            GaugeMetricFamily(_THREADS, _THREADS_HELP),
        ]

    def collect(self) -> Iterable[Metric]:
        batches = GaugeMetricFamily(_BATCHES, _BATCHES_HELP)
        threads = GaugeMetricFamily(_THREADS, _THREADS_HELP)
        totals = self._supervisors.totals()
        if totals is not None:
            batches.add_metric([], totals[0])
            threads.add_metric([], totals[1])
        return [batches, threads]


class TaskMetrics(TaskObserver):
    """Prometheus metrics of background tasks: an observer and a collector.

    Pass it to the middleware (``BackgroundTasksMiddleware(app,
    observers=[metrics])``) or to a supervisor
    (``supervisor.add_observer(metrics)``); make one per registry.

    Metrics:
        ``trio_background_tasks_total{state}``: tasks that reached each final
        state (completed, failed, cancelled, skipped, abandoned, handed_off).
        ``trio_background_task_duration_seconds{state}``: how long each task
        that started ran, by final state.
        ``trio_background_task_attempts{state}``: how many times each task
        that started ran (1, more with ``retries``), by final state,
        observed when it ends.
        ``trio_background_task_timeouts_total``: tasks that failed because
        their last attempt ran past their policy's ``timeout`` (an attempt
        that timed out and was retried shows in the attempts instead).
        ``trio_background_task_wait_seconds``: from the response being
        complete to the task's turn to run (the tasks before it included),
        observed as the task starts. A sync task may then wait for a worker
        thread: ``trio_background_threads_busy`` shows when they are all
        busy. A task with no response to wait for (an app-level task, one
        of a websocket, one added after its response was complete) is
        observed when it ends, with the wait its record states.
        ``trio_background_shutdown_overrun_seconds``: how far past the
        shutdown deadline a task ended, for each task that overran it.
        ``trio_background_batches_running`` and
        ``trio_background_threads_busy``: gauges read from the supervisors
        when scraped.

    Args:
        registry: Where to register (prometheus_client's ``REGISTRY`` if
            None). In multiprocess mode the values go to files and
            :func:`metrics_app` reads them there, whatever the registry.
        supervisor: A supervisor whose gauges to report from the start. The
            supervisor of each request the metrics see is added by itself,
            so this is only needed for supervisors that run batches outside
            requests (``Supervisor.run``).

    Raises:
        ValueError: These metrics are already registered on ``registry``.

    Gauges:
        The gauges read the supervisors' state, which lives in the trio run:
        a scrape from outside it (``prometheus_client.start_http_server``)
        shows the counters and histograms and leaves the gauges empty. Serve
        them with :func:`metrics_app` in the app.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        registry = REGISTRY if registry is None else registry
        self.registry = registry
        self._supervisors = _Supervisors()
        if supervisor is not None:
            self._supervisors.add(supervisor)
        self._multiprocess = multiprocess_mode()
        self._refreshing: set[object] = set()
        # When each task's response was complete, until the task starts (or
        # ends without starting): tasks are hashed by identity.
        self._ready: dict[BackgroundTask, float] = {}
        self._waited: set[BackgroundTask] = set()
        try:
            self._build(registry)
        except ValueError as exc:
            raise ValueError(
                "trio_background's metrics are already registered on this registry: make "
                "one TaskMetrics per registry and pass the same one to every middleware, "
                "or give this one its own: TaskMetrics(registry=CollectorRegistry())"
            ) from exc
        _ON_REGISTRY[registry] = weakref.ref(self)

    def app(self) -> MetricsApp:
        """The page that serves these metrics (see :func:`metrics_app`).

        Served behind the middleware, the page also registers these metrics
        as an observer of the app's supervisor if they are not one yet.
        """
        return MetricsApp(self.registry, metrics=self)

    def _build(self, registry: CollectorRegistry) -> None:
        self.tasks = Counter(
            "trio_background_tasks",
            "Background tasks that reached a final state, by state.",
            ["state"],
            registry=registry,
        )
        self.duration = Histogram(
            "trio_background_task_duration_seconds",
            "How long each background task that started ran, by final state.",
            ["state"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.attempts = Histogram(
            "trio_background_task_attempts",
            "How many times each background task that started ran (retries included), "
            "by final state.",
            ["state"],
            buckets=ATTEMPT_BUCKETS,
            registry=registry,
        )
        self.timeouts = Counter(
            "trio_background_task_timeouts",
            "Background tasks that failed because their last attempt ran past their timeout.",
            registry=registry,
        )
        self.wait = Histogram(
            "trio_background_task_wait_seconds",
            "From the response being complete to the task's turn to run, observed as it starts.",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.overrun = Histogram(
            "trio_background_shutdown_overrun_seconds",
            "How far past the shutdown deadline each task that overran it ended.",
            buckets=OVERRUN_BUCKETS,
            registry=registry,
        )
        for state in TaskState:
            if state.is_final:
                self.tasks.labels(state.value)
        self._gauges: tuple[Gauge, Gauge] | None = None
        if self._multiprocess:
            # Files, one per worker, summed over the live workers when served.
            self._gauges = (
                Gauge(_BATCHES, _BATCHES_HELP, registry=None, multiprocess_mode="livesum"),
                Gauge(_THREADS, _THREADS_HELP, registry=None, multiprocess_mode="livesum"),
            )
        else:
            registry.register(_GaugeCollector(self._supervisors))

    # The observer. Each method is a few dictionary operations and a lock or
    # two in prometheus_client: cheap next to a task.

    def response_complete(self, scope: Scope) -> None:
        if EXCHANGE_KEY in scope:
            self._supervisors.add(supervisor_from_scope(scope))
            now = trio.current_time()
            for task in from_scope(scope).tasks:
                if task.state is TaskState.PENDING:
                    self._ready[task] = now
        self._start_refresh()

    def task_running(self, task: BackgroundTask) -> AbstractContextManager[None] | None:
        ready = self._ready.pop(task, None)
        if ready is not None:
            self.wait.observe(max(0.0, trio.current_time() - ready))
            self._waited.add(task)
        return None

    def task_ended(self, task: BackgroundTask, record: TaskRecord) -> None:
        state = record.state.value
        self.tasks.labels(state).inc()
        if record.started_at is not None and record.ended_at is not None:
            self.duration.labels(state).observe(max(0.0, record.ended_at - record.started_at))
        if record.attempts > 0:
            self.attempts.labels(state).observe(record.attempts)
        if (
            record.state is TaskState.FAILED
            and task.policy is not None
            and task.policy.timeout is not None
            and record.error is not None
            and record.error.startswith(_TIMED_OUT)
        ):
            self.timeouts.inc()
        self._ready.pop(task, None)
        if task in self._waited:
            self._waited.discard(task)
        elif record.waited is not None:
            self.wait.observe(max(0.0, record.waited))
        if record.overrun is not None:
            self.overrun.observe(max(0.0, record.overrun))

    def watch(self, supervisor: Supervisor) -> None:
        """Report the gauges of ``supervisor`` too (see ``supervisor=``)."""
        self._supervisors.add(supervisor)
        self._start_refresh()

    # Multiprocess mode: each worker writes its gauges to its own file.

    def _start_refresh(self) -> None:
        gauges = self._gauges
        if gauges is None:
            return
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return
        if token in self._refreshing:
            return
        self._refreshing.add(token)
        trio.lowlevel.spawn_system_task(
            self._refresh, token, gauges, name="trio_background metrics"
        )

    async def _refresh(self, token: object, gauges: tuple[Gauge, Gauge]) -> None:
        batches, threads = gauges
        try:
            while True:
                totals = self._supervisors.totals()
                if totals is not None:
                    batches.set(totals[0])
                    threads.set(totals[1])
                await trio.sleep(MULTIPROCESS_REFRESH)
        finally:
            # The supervisors' state ends with the trio run: so do its gauges.
            batches.set(0)
            threads.set(0)
            self._refreshing.discard(token)


# The TaskMetrics of each registry (one at most), for the pages that serve it.
_ON_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, weakref.ref[TaskMetrics]] = (
    weakref.WeakKeyDictionary()
)


def metrics_app(registry: CollectorRegistry | None = None) -> MetricsApp:
    """An ASGI app serving ``registry`` in Prometheus' text format.

    Example::

        app.add_route("/metrics", metrics_app(), include_in_schema=False)

    (``app.mount("/metrics", ...)`` serves it too, at ``/metrics/``: a
    mount answers ``/metrics`` with a redirect.) It answers OpenMetrics when
    the scraper asks for it, and the text format when its ``Accept`` header
    is one prometheus_client cannot read. In multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR`` set) it serves what every worker wrote to
    that directory, read in a worker thread, instead.

    Served behind the middleware, the page checks the wiring: the
    :class:`TaskMetrics` of ``registry`` is registered as an observer of the
    app's supervisor if it was not (and the page and a WARNING say how many
    tasks ended before, uncounted); with no :class:`TaskMetrics` on
    ``registry``, the page and a WARNING say to make one.

    Args:
        registry: What to serve; prometheus_client's ``REGISTRY`` if None.
    """
    return MetricsApp(registry)


class MetricsApp:
    """The metrics page; make one with :meth:`TaskMetrics.app` or :func:`metrics_app`."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, metrics: TaskMetrics | None = None
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self._metrics = metrics
        self._warned: weakref.WeakSet[Supervisor] = weakref.WeakSet()
        self._warned_unwired = False

    def _task_metrics(self) -> TaskMetrics | None:
        if self._metrics is not None:
            return self._metrics
        found = _ON_REGISTRY.get(self.registry)
        return None if found is None else found()

    def _check_wiring(self, scope: Scope) -> str | None:
        """Wire the metrics to the request's supervisor; what the page should say, or None."""
        metrics = self._task_metrics()
        if metrics is None:
            if self._warned_unwired:
                return None
            self._warned_unwired = True
            note = (
                "no TaskMetrics on this registry, so this page has no task metrics: make one "
                "and serve its page: metrics = TaskMetrics(); "
                "BackgroundTasksMiddleware(app, observers=[metrics]); "
                'app.add_route("/metrics", metrics.app())'
            )
            logger.warning("metrics page: %s", note)
            return note
        if EXCHANGE_KEY not in scope:
            return None  # served outside the middleware: no supervisor to check
        supervisor = supervisor_from_scope(scope)
        if supervisor in metrics._supervisors:  # pyright: ignore[reportPrivateUsage]  # same module
            return None
        statistics = supervisor.statistics()
        # Tasks still running are counted when they end; those already ended are lost.
        before = sum(statistics.counts.values())
        supervisor.add_observer(metrics)  # does nothing if it was one already
        metrics.watch(supervisor)
        if before == 0 or supervisor in self._warned:
            return None
        self._warned.add(supervisor)
        note = (
            "TaskMetrics was not an observer of this app until this scrape: the "
            f"{before} tasks that ended before it are not counted. Pass it to the middleware "
            "to count from the start: BackgroundTasksMiddleware(app, observers=[metrics])"
        )
        logger.warning("metrics page: %s", note)
        return note

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(
                f"the metrics app serves HTTP only, got a {scope['type']!r} scope: mount it "
                "in an app (app.mount('/metrics', metrics_app()))"
            )
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(
                send, 405, b"text/plain; charset=utf-8", b"metrics are read-only: use GET"
            )
            return
        note = self._check_wiring(scope)
        accept = b",".join(value for name, value in _headers(scope) if name.lower() == b"accept")
        encoder, content_type = _choose_encoder(accept.decode("latin-1"))
        if multiprocess_mode():
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            body = await trio.to_thread.run_sync(encoder, merged)
        else:
            body = encoder(self.registry)
        if note is not None and content_type.startswith("text/plain"):
            # A comment line, which Prometheus ignores (OpenMetrics has none).
            body = f"# trio_background: {note}\n".encode() + body
        await _respond(send, 200, content_type.encode(), body)


def _choose_encoder(accept: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """prometheus_client's choice for ``accept``, or its default for one it cannot read."""
    try:
        return choose_encoder(accept)
    except (TypeError, ValueError):
        # e.g. "version=1.x": prometheus_client compares the parts as numbers.
        return choose_encoder("")


def _headers(scope: Scope) -> Sequence[tuple[bytes, bytes]]:
    headers: Sequence[tuple[bytes, bytes]] = scope.get("headers", ())
    return headers


async def _respond(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
