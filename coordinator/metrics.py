"""Prometheus metrics, built on a registry passed in (no global state).

Label sets are bounded: gRPC method and status code, event type, consumer name and project id.
Never a task, person or label value.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rpc_total = Counter(
            "labelweave_rpc_total",
            "gRPC calls handled, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.rpc_latency = Histogram(
            "labelweave_rpc_latency_seconds",
            "gRPC handling latency",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events_appended = Counter(
            "labelweave_events_appended_total",
            "Events durably appended to the log, by type",
            ["type"],
            registry=r,
        )
        self.commands_total = Counter(
            "labelweave_commands_total",
            "Commands decided, by outcome (appended, duplicate, refused, conflict)",
            ["outcome"],
            registry=r,
        )
        self.append_latency = Histogram(
            "labelweave_append_latency_seconds",
            "Time from append request to durable commit",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.append_batch_size = Histogram(
            "labelweave_append_batch_commands",
            "Commands per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.projection_lag = Gauge(
            "labelweave_projection_lag_events",
            "Events in the log not yet applied, by consumer",
            ["consumer"],
            registry=r,
        )
        self.projection_applied = Counter(
            "labelweave_projection_events_applied_total",
            "Events applied to projections",
            ["consumer"],
            registry=r,
        )
        self.projection_commit_latency = Histogram(
            "labelweave_projection_commit_seconds",
            "Projection store commit latency per batch",
            ["consumer"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "labelweave_queue_depth_tasks", "Tasks with a free slot, by project", ["project"], registry=r
        )
        self.stage_depth = Gauge(
            "labelweave_stage_depth",
            "Work waiting at a stage (annotate: tasks with a free slot; review stages; the expert"
            " stage: open disputes), by project and stage",
            ["project", "stage"],
            registry=r,
        )
        self.stage_oldest_seconds = Gauge(
            "labelweave_stage_oldest_seconds",
            "Age of the longest-waiting item at a stage (0 when empty), by project and stage",
            ["project", "stage"],
            registry=r,
        )
        self.sla_at_risk_tasks = Gauge(
            "labelweave_sla_at_risk_tasks",
            "Open tasks whose deadline the capacity on shift cannot meet, by project",
            ["project"],
            registry=r,
        )
        self.leases_expired = Counter(
            "labelweave_leases_expired_total", "Leases expired by the lease timer", registry=r
        )
        self.label_subscribers = Gauge(
            "labelweave_label_subscribers", "Open label-stream subscriptions", registry=r
        )
