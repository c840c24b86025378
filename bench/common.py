"""What both benchmarks share besides their report layout (`bench/report.py`)."""

from __future__ import annotations

from coordinator._pb.labelweave.events.v1 import annotation_pb2

ANNOTATION = annotation_pb2.Annotation(
    shapes=[
        annotation_pb2.Shape(label="car", box=annotation_pb2.BoundingBox(x=10, y=20, width=100, height=50))
    ]
)
"""The label every simulated annotator submits: one box of a class `sample_schema()` has."""


class BenchError(Exception):
    """Something broke (as opposed to a target being missed)."""
