"""Prometheus metrics: aggregates only, never personal data in a label.

Subsystems declare their metrics at import time through this module, for example::

    from gateway import metrics

    SMS_SENDS = metrics.counter(
        "sms_sends_total", "SMS messages handed to a provider.", ("country", "provider", "outcome")
    )
    ...
    SMS_SENDS.labels(country="NL", provider="kannel", outcome="accepted").inc()

Label values must come from small fixed sets (a country code, a provider name, an outcome):
never a phone number, a BSN, a user name, an IP address or a raw URL path. Label *names* that
invite such values are refused outright.

Several granian workers each count in their own process; `gateway.server` points
PROMETHEUS_MULTIPROC_DIR at a folder in the instance dir (emptied at start) so `/metrics`
adds them up. prometheus_client chooses its storage when it is first imported, so this module
imports it only when a metric is first used, which is after granian has started the workers.

Only counters and histograms exist here. prometheus_client keeps the files of a worker that
died or was restarted on purpose, so its counts stay in the sums (a counter must never go
down); its `mark_process_dead` only removes live gauges, which we do not have. So no hook runs
when a worker exits (granian offers none; gunicorn's child_exit called one).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Label names that would carry personal or unbounded data.
FORBIDDEN_LABELS = frozenset(
    {"bsn", "phone", "msisdn", "email", "ip", "address", "user", "username", "subject", "sub",
     "name", "path", "url", "query", "session", "token"}
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Label values come from small fixed sets; past this many children per metric, something
#: is wrong, and the cache stops growing (the metric itself still works).
MAX_CACHED_CHILDREN = 1000

_lock = threading.Lock()
_declared: dict[str, _Metric] = {}


class _Metric:
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], **options: Any):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.options = options
        self._real: Any = None
        #: Children by label values: prometheus_client's `labels` validates and locks on
        #: every call, and the request log asks for two children on every request.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _metric(self) -> Any:
        if self._real is None:
            with _lock:
                if self._real is None:
                    import prometheus_client

                    factory = getattr(prometheus_client, self.kind)
                    self._real = factory(
                        self.name, self.documentation, self.labelnames, **self.options
                    )
        return self._real

    def labels(self, *values: str, **labels: str) -> Any:
        """The child for these label values (prometheus_client's `labels`)."""
        key = (values, tuple(labels.items()))
        child = self._children.get(key)
        if child is None:
            child = self._metric().labels(*values, **labels)
            if len(self._children) < MAX_CACHED_CHILDREN:
                self._children[key] = child
        return child


class Counter(_Metric):
    kind = "Counter"

    def inc(self, amount: float = 1) -> None:
        self._metric().inc(amount)


class Histogram(_Metric):
    kind = "Histogram"

    def observe(self, value: float) -> None:
        self._metric().observe(value)


def _declare(cls: type[_Metric], name: str, documentation: str, labelnames: Sequence[str],
             **options: Any) -> Any:
    bad = FORBIDDEN_LABELS.intersection(label.lower() for label in labelnames)
    if bad:
        raise ValueError(f"metric {name}: label {sorted(bad)[0]!r} could carry personal data")
    with _lock:
        existing = _declared.get(name)
        if existing is not None:
            # Importing a module twice (tests build many apps) must not register twice.
            if type(existing) is not cls or existing.labelnames != tuple(labelnames):
                raise ValueError(f"metric {name} is already declared differently")
            return existing
        metric = cls(name, documentation, labelnames, **options)
        _declared[name] = metric
        return metric


def counter(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
    """Declare (or get the already declared) counter `name`."""
    metric: Counter = _declare(Counter, name, documentation, labelnames)
    return metric


def histogram(name: str, documentation: str, labelnames: Sequence[str] = (),
              buckets: Sequence[float] | None = None) -> Histogram:
    """Declare (or get the already declared) histogram `name`."""
    options: dict[str, Any] = {} if buckets is None else {"buckets": tuple(buckets)}
    metric: Histogram = _declare(Histogram, name, documentation, labelnames, **options)
    return metric


def render() -> tuple[bytes, str]:
    """The exposition text and its content type; adds up all workers in multiprocess mode."""
    import prometheus_client
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body: bytes = prometheus_client.generate_latest(registry)
    else:
        body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    return body, str(prometheus_client.CONTENT_TYPE_LATEST)


def prepare_multiprocess_dir(folder: Path) -> None:
    """Empty `folder` and point prometheus_client at it; call before any worker starts.

    Files left from an earlier run would be added to this run's counts, so they go.
    """
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(folder)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        # Imported already (before the variable was set): metrics made from now on must still
        # go to the shared files. Metrics made earlier with prometheus_client directly cannot
        # be fixed, which is why subsystems declare theirs through this module.
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]


# HTTP requests by endpoint name (never the raw path) and status.
HTTP_REQUESTS = counter(
    "http_requests_total", "HTTP requests answered.", ("endpoint", "method", "status")
)
HTTP_DURATION = histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request.", ("endpoint",)
)
