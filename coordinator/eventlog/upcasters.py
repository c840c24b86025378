"""Upcasters turn events written under an older schema version into today's shape.

Events are never rewritten in the log; decoding applies `UPCASTERS[(type, version)]` in a chain
until the event reaches `PAYLOAD_SCHEMA_VERSIONS[type]`. Add one function per meaning change,
e.g. `UPCASTERS[("task_imported", 1)] = _task_imported_v1_to_v2`, and a test that replays a
stored v1 event.

None is registered yet. Review pipelines added fields whose absence keeps the old meaning: a
`TaskImported` without `pipeline` follows the one-stage pipeline its `review_policy` stands
for (`coordinator.domain.review.pipeline_of_import`) and a `ReviewRecorded` without `stage` is a
verdict at the first stage, so logs written before pipelines replay unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from coordinator._pb.labelweave.events.v1 import events_pb2

Upcaster = Callable[[events_pb2.EventEnvelope], events_pb2.EventEnvelope]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcast(envelope: events_pb2.EventEnvelope) -> events_pb2.EventEnvelope:
    from coordinator.eventlog.codec import PAYLOAD_SCHEMA_VERSIONS

    target = PAYLOAD_SCHEMA_VERSIONS.get(envelope.type, envelope.schema_version)
    while envelope.schema_version < target:
        step = UPCASTERS.get((envelope.type, envelope.schema_version))
        if step is None:
            raise ValueError(f"no upcaster for {envelope.type} v{envelope.schema_version}")
        envelope = step(envelope)
    return envelope
