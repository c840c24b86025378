"""Helpers for tests, benchmarks and the simulator: a controllable clock and sample schemas."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from coordinator._pb.labelweave.events.v1 import model_pb2

K = model_pb2


class ManualClock:
    """A clock tests move by hand, so lease expiry happens exactly when a test says."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


def sample_schema() -> model_pb2.LabelSchema:
    """A schema with a class for every annotation kind (used by tests, bench and simulate)."""
    person_skeleton = model_pb2.SkeletonDefinition(
        name="person",
        keypoints=["nose", "left_eye", "right_eye", "left_shoulder", "right_shoulder"],
        edges=[
            model_pb2.SkeletonEdge(**{"from": "nose", "to": "left_eye"}),
            model_pb2.SkeletonEdge(**{"from": "nose", "to": "right_eye"}),
            model_pb2.SkeletonEdge(**{"from": "left_shoulder", "to": "right_shoulder"}),
        ],
    )
    return model_pb2.LabelSchema(
        classes=[
            model_pb2.LabelClass(
                name="car",
                kinds=[
                    K.ANNOTATION_KIND_BOX,
                    K.ANNOTATION_KIND_ROTATED_BOX,
                    K.ANNOTATION_KIND_POLYGON,
                    K.ANNOTATION_KIND_MULTIPOLYGON,
                    K.ANNOTATION_KIND_INSTANCE_MASK,
                    K.ANNOTATION_KIND_IMAGE_CUBOID,
                ],
                attributes=[
                    model_pb2.AttributeDefinition(name="occluded", type=K.ATTRIBUTE_TYPE_BOOL),
                    model_pb2.AttributeDefinition(
                        name="colour", type=K.ATTRIBUTE_TYPE_ENUM, options=["red", "blue", "other"]
                    ),
                ],
            ),
            model_pb2.LabelClass(name="pedestrian", kinds=[K.ANNOTATION_KIND_BOX, K.ANNOTATION_KIND_POLYGON]),
            model_pb2.LabelClass(name="lane", kinds=[K.ANNOTATION_KIND_POLYLINE], is_lane=True),
            model_pb2.LabelClass(
                name="person",
                kinds=[K.ANNOTATION_KIND_KEYPOINTS, K.ANNOTATION_KIND_SKELETON],
                skeleton="person",
            ),
            model_pb2.LabelClass(name="vehicle3d", kinds=[K.ANNOTATION_KIND_CUBOID]),
            model_pb2.LabelClass(name="ground", kinds=[K.ANNOTATION_KIND_POINT_LABELS]),
            model_pb2.LabelClass(name="road", kinds=[K.ANNOTATION_KIND_SEMANTIC_SEGMENTATION]),
            model_pb2.LabelClass(name="damage", kinds=[K.ANNOTATION_KIND_BITMAP]),
            model_pb2.LabelClass(name="scene", kinds=[K.ANNOTATION_KIND_CLASSIFICATION]),
            model_pb2.LabelClass(name="caption", kinds=[K.ANNOTATION_KIND_TEXT]),
            model_pb2.LabelClass(name="entity", kinds=[K.ANNOTATION_KIND_TEXT_SPAN]),
            model_pb2.LabelClass(
                name="widget",
                kinds=[K.ANNOTATION_KIND_CUSTOM],
                json_schema='{"type":"object","required":["size"],"properties":{"size":{"type":"number","minimum":0}}}',
            ),
        ],
        skeletons=[person_skeleton],
        reject_reasons=["wrong_class", "loose_box", "missed_object", "guideline_violation"],
    )
