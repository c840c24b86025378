"""Validation of label schemas, annotations and task specs: valid input of every kind passes, and
each kind of bad input is refused with `InvalidArgument` naming the exact field."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2 as M
from coordinator.domain import validation
from coordinator.domain.validation import (
    validate_annotation,
    validate_id,
    validate_label_schema,
    validate_task_spec,
)
from coordinator.errors import InvalidArgument

NAN, INF = math.nan, math.inf

PERSON_KEYPOINTS = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
]
WIDGET_JSON_SCHEMA = json.dumps(
    {
        "type": "object",
        "required": ["size"],
        "properties": {
            "size": {"type": "number", "minimum": 0},
            "parts": {
                "type": "array",
                "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            },
        },
        "additionalProperties": False,
    }
)


def _edge(a: str, b: str) -> M.SkeletonEdge:
    return M.SkeletonEdge(**{"from": a, "to": b})


def make_schema() -> M.LabelSchema:
    attr = M.AttributeDefinition
    return M.LabelSchema(
        version=3,
        classes=[
            M.LabelClass(  # 0
                name="car",
                kinds=[
                    M.ANNOTATION_KIND_BOX,
                    M.ANNOTATION_KIND_ROTATED_BOX,
                    M.ANNOTATION_KIND_POLYGON,
                    M.ANNOTATION_KIND_MULTIPOLYGON,
                    M.ANNOTATION_KIND_INSTANCE_MASK,
                ],
                attributes=[
                    attr(name="occluded", type=M.ATTRIBUTE_TYPE_BOOL, required=True),
                    attr(name="color", type=M.ATTRIBUTE_TYPE_ENUM, options=["red", "blue", "white"]),
                    attr(name="truncation", type=M.ATTRIBUTE_TYPE_NUMBER),
                    attr(name="note", type=M.ATTRIBUTE_TYPE_TEXT),
                ],
            ),
            M.LabelClass(name="lane", kinds=[M.ANNOTATION_KIND_POLYLINE], is_lane=True),  # 1
            M.LabelClass(
                name="vehicle3d", kinds=[M.ANNOTATION_KIND_CUBOID, M.ANNOTATION_KIND_IMAGE_CUBOID]
            ),  # 2
            M.LabelClass(  # 3
                name="person",
                kinds=[M.ANNOTATION_KIND_KEYPOINTS, M.ANNOTATION_KIND_SKELETON],
                skeleton="person",
            ),
            M.LabelClass(name="ground", kinds=[M.ANNOTATION_KIND_POINT_LABELS]),  # 4
            M.LabelClass(name="road", kinds=[M.ANNOTATION_KIND_SEMANTIC_SEGMENTATION]),  # 5
            M.LabelClass(name="sky", kinds=[M.ANNOTATION_KIND_SEMANTIC_SEGMENTATION]),  # 6
            M.LabelClass(  # 7
                name="scene",
                kinds=[M.ANNOTATION_KIND_CLASSIFICATION],
                attributes=[
                    attr(name="weather", type=M.ATTRIBUTE_TYPE_ENUM, options=["sunny", "rain", "snow"])
                ],
            ),
            M.LabelClass(name="caption", kinds=[M.ANNOTATION_KIND_TEXT]),  # 8
            M.LabelClass(  # 9
                name="entity",
                kinds=[M.ANNOTATION_KIND_TEXT_SPAN],
                attributes=[
                    attr(
                        name="type", type=M.ATTRIBUTE_TYPE_ENUM, options=["per", "org", "loc"], required=True
                    )
                ],
            ),
            M.LabelClass(
                name="widget", kinds=[M.ANNOTATION_KIND_CUSTOM], json_schema=WIDGET_JSON_SCHEMA
            ),  # 10
            M.LabelClass(name="damage", kinds=[M.ANNOTATION_KIND_BITMAP]),  # 11
            M.LabelClass(name="hand", kinds=[M.ANNOTATION_KIND_SKELETON], skeleton="hand"),  # 12
        ],
        skeletons=[
            M.SkeletonDefinition(
                name="person",
                keypoints=PERSON_KEYPOINTS,
                edges=[
                    _edge("nose", "left_eye"),
                    _edge("nose", "right_eye"),
                    _edge("left_eye", "left_ear"),
                    _edge("right_eye", "right_ear"),
                    _edge("left_shoulder", "right_shoulder"),
                ],
                sigmas=[0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079],
            ),
            M.SkeletonDefinition(
                name="hand", keypoints=["wrist", "thumb", "index"], edges=[_edge("wrist", "thumb")]
            ),
        ],
        reject_reasons=["wrong_class", "loose_box", "missed_object"],
    )


SCHEMA = make_schema()  # for hypothesis tests, which cannot take function-scoped fixtures


@pytest.fixture
def schema() -> M.LabelSchema:
    return make_schema()


Media = tuple["M.MediaType.ValueType", M.MediaInfo]
IMAGE: Media = (M.MEDIA_TYPE_IMAGE, M.MediaInfo(width=640, height=480))
IMAGE_UNKNOWN_SIZE: Media = (M.MEDIA_TYPE_IMAGE, M.MediaInfo())
VIDEO: Media = (M.MEDIA_TYPE_VIDEO, M.MediaInfo(width=1920, height=1080, frame_count=300))
CLOUD: Media = (M.MEDIA_TYPE_POINT_CLOUD, M.MediaInfo(point_count=100_000))
TEXT: Media = (M.MEDIA_TYPE_TEXT, M.MediaInfo(text_length=500))


def check(annotation: A.Annotation, schema: M.LabelSchema, media: Media = IMAGE) -> None:
    validate_annotation(annotation, schema=schema, media_type=media[0], media=media[1])


# ------------------------------------------------------------------ builders


def pts(*xy: tuple[float, float]) -> list[A.Point2]:
    return [A.Point2(x=x, y=y) for x, y in xy]


def ring(*xy: tuple[float, float]) -> A.Ring:
    return A.Ring(points=pts(*xy))


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def attrs(**values: object) -> dict[str, struct_pb2.Value]:
    out: dict[str, struct_pb2.Value] = {}
    for name, v in values.items():
        val = struct_pb2.Value()
        if isinstance(v, bool):
            val.bool_value = v
        elif isinstance(v, int | float):
            val.number_value = float(v)
        elif isinstance(v, str):
            val.string_value = v
        out[name] = val
    return out


def shape(label: str, **kw: object) -> A.Shape:
    return A.Shape(label=label, **kw)  # type: ignore[arg-type]


def car(**kw: object) -> A.Shape:
    """A car shape with its required attribute."""
    extra = kw.pop("attributes", None)
    return A.Shape(label="car", attributes=extra if extra is not None else attrs(occluded=False), **kw)  # type: ignore[arg-type]


def ann(*shapes: A.Shape, **kw: object) -> A.Annotation:
    return A.Annotation(shapes=list(shapes), **kw)  # type: ignore[arg-type]


def box(x: float = 10, y: float = 10, w: float = 50, h: float = 40) -> A.BoundingBox:
    return A.BoundingBox(x=x, y=y, width=w, height=h)


SQUARE = ring((100, 100), (300, 100), (300, 300), (100, 300))
HOLE = ring((150, 150), (200, 150), (200, 200))


def kp(name: str, x: float, y: float, vis: int = A.VISIBILITY_VISIBLE) -> A.Keypoint:
    return A.Keypoint(name=name, x=x, y=y, visibility=vis)  # type: ignore[arg-type]


def person_kps(*points: A.Keypoint) -> A.Shape:
    return shape("person", keypoints=A.Keypoints(points=list(points)))


def rle(h: int, w: int, counts: list[int]) -> A.RleMask:
    return A.RleMask(height=h, width=w, counts=counts)


def cuboid(
    dims: tuple[float, float, float] = (4.5, 1.8, 1.5),
    q: tuple[float, float, float, float] | None = None,
    yaw: float = 0,
) -> A.Cuboid:
    c = A.Cuboid(
        center=A.Point3(x=10, y=-2, z=0.5), dimensions=A.Point3(x=dims[0], y=dims[1], z=dims[2]), yaw=yaw
    )
    if q is not None:
        c.rotation.CopyFrom(A.Quaternion(w=q[0], x=q[1], y=q[2], z=q[3]))
    return c


def track(track_id: str, label: str, *frames: tuple[int, A.Shape]) -> A.Track:
    return A.Track(track_id=track_id, label=label, frames=[A.TrackFrame(frame=f, shape=s) for f, s in frames])


def segmentation(*classes: tuple[str, A.RleMask]) -> A.SemanticSegmentation:
    return A.SemanticSegmentation(classes=[A.SegmentClassMask(label=label, mask=m) for label, m in classes])


FULL = 640 * 480

# ------------------------------------------------------------------ valid input of every kind

VALID: list[tuple[str, A.Annotation, Media]] = [
    ("empty", A.Annotation(), IMAGE),
    ("box", ann(car(box=box())), IMAGE),
    ("box filling the image", ann(car(box=box(0, 0, 640, 480))), IMAGE),
    (
        "box with every attribute",
        ann(car(box=box(), attributes=attrs(occluded=True, color="blue", truncation=0.25, note="dented"))),
        IMAGE,
    ),
    (
        "rotated box",
        ann(car(rotated_box=A.RotatedBox(cx=320, cy=240, width=100, height=50, angle=0.7))),
        IMAGE,
    ),
    ("polygon", ann(car(polygon=A.Polygon(exterior=SQUARE))), IMAGE),
    ("polygon with a hole", ann(car(polygon=A.Polygon(exterior=SQUARE, holes=[HOLE]))), IMAGE),
    (
        "hole touching the exterior at a vertex",
        ann(car(polygon=A.Polygon(exterior=SQUARE, holes=[ring((100, 100), (150, 120), (120, 150))]))),
        IMAGE,
    ),
    (
        "concave polygon with collinear vertices",
        ann(car(polygon=A.Polygon(exterior=ring((0, 0), (10, 0), (20, 0), (20, 20), (10, 5), (0, 20))))),
        IMAGE,
    ),
    (
        "multipolygon",
        ann(
            car(
                multipolygon=A.MultiPolygon(
                    polygons=[
                        A.Polygon(exterior=SQUARE),
                        A.Polygon(exterior=ring((400, 10), (450, 10), (420, 60))),
                    ]
                )
            )
        ),
        IMAGE,
    ),
    (
        "instance mask",
        ann(car(instance_mask=A.InstanceMask(mask=rle(480, 640, [1000, 500, FULL - 1500])))),
        IMAGE,
    ),
    (
        "polyline lane",
        ann(shape("lane", polyline=A.Polyline(points=pts((0, 480), (300, 240), (320, 0))))),
        IMAGE,
    ),
    (
        "image cuboid",
        ann(
            shape(
                "vehicle3d",
                image_cuboid=A.ImageCuboid(
                    front=pts((10, 10), (60, 10), (60, 60), (10, 60)),
                    back=pts((30, 0), (80, 0), (80, 50), (30, 50)),
                ),
            )
        ),
        IMAGE,
    ),
    ("cuboid with yaw", ann(shape("vehicle3d", cuboid=cuboid(yaw=1.2))), CLOUD),
    ("cuboid with quaternion", ann(shape("vehicle3d", cuboid=cuboid(q=(0.5, 0.5, 0.5, 0.5)))), CLOUD),
    ("camera-frame cuboid", ann(shape("vehicle3d", cuboid=cuboid())), IMAGE),
    (
        "keypoints",
        ann(
            person_kps(
                kp("nose", 320, 100),
                kp("left_eye", 310, 90, A.VISIBILITY_OCCLUDED),
                kp("right_eye", 0, 0, A.VISIBILITY_NOT_LABELED),
                kp("left_ear", -40, 9000, A.VISIBILITY_NOT_LABELED),  # not labelled: never bounds-checked
            )
        ),
        IMAGE,
    ),
    (
        "skeleton",
        ann(
            shape(
                "person",
                skeleton=A.Skeleton(
                    definition="person", points=[kp(n, 100 + i, 200) for i, n in enumerate(PERSON_KEYPOINTS)]
                ),
            )
        ),
        IMAGE,
    ),
    ("bitmap", ann(shape("damage", bitmap=A.Bitmap(height=480, width=640, data=bytes(FULL // 8)))), IMAGE),
    (
        "bitmap with a partial last byte",
        ann(shape("damage", bitmap=A.Bitmap(height=3, width=3, data=b"\xff\x80"))),
        (M.MEDIA_TYPE_IMAGE, M.MediaInfo(width=3, height=3)),
    ),
    ("point labels", ann(shape("ground", point_labels=A.PointLabels(indices=[0, 5, 99_999, 17]))), CLOUD),
    (
        "classification",
        ann(shape("scene", classification=A.Classification(), attributes=attrs(weather="rain"))),
        IMAGE,
    ),
    ("text", ann(shape("caption", text=A.TextValue(text="a red car turning left"))), IMAGE),
    (
        "text span",
        ann(shape("entity", text_span=A.TextSpan(start=0, end=500), attributes=attrs(type="org"))),
        TEXT,
    ),
    (
        "custom",
        ann(shape("widget", custom=A.CustomValue(value=struct({"size": 3, "parts": [{"name": "knob"}]})))),
        IMAGE,
    ),
    (
        "semantic segmentation",
        A.Annotation(
            segmentation=segmentation(
                ("road", rle(480, 640, [0, FULL // 2, FULL // 2])), ("sky", rle(480, 640, [FULL]))
            )
        ),
        IMAGE,
    ),
    (
        "video track",
        A.Annotation(
            tracks=[
                track(
                    "t1",
                    "car",
                    (0, car(box=box())),
                    (5, car(box=box(20))),
                    (10, A.Shape(box=box(30), attributes=attrs(occluded=True))),
                ),
                track(
                    "t2", "lane", (299, shape("lane", polyline=A.Polyline(points=pts((0, 0), (1920, 1080)))))
                ),
            ]
        ),
        VIDEO,
    ),
    (
        "model pre-label",
        ann(
            car(box=box(), score=0.93),
            source=A.ANNOTATION_SOURCE_MODEL,
            model=A.ModelInfo(name="detr", version="2024-05"),
        ),
        IMAGE,
    ),
    (
        "shape ids unique",
        ann(car(id="a", box=box()), car(id="b", box=box()), car(box=box()), car(box=box())),
        IMAGE,
    ),
    ("unknown image size skips bounds", ann(car(box=box(5000, 5000, 10, 10))), IMAGE_UNKNOWN_SIZE),
]


@pytest.mark.parametrize(("case", "annotation", "media"), VALID, ids=[v[0] for v in VALID])
def test_valid_annotation_of_every_kind_passes(
    schema: M.LabelSchema, case: str, annotation: A.Annotation, media: Media
) -> None:
    check(annotation, schema, media)


def test_the_schema_fixture_is_valid(schema: M.LabelSchema) -> None:
    validate_label_schema(schema)


# ------------------------------------------------------------------ bad annotations

BAD: list[tuple[str, A.Annotation, Media, str, str]] = [
    # non-finite numbers, in many places
    (
        "nan box width",
        ann(car(box=box(w=NAN))),
        IMAGE,
        "annotation.shapes[0].box.width",
        "must be finite, got nan",
    ),
    ("inf box x", ann(car(box=box(x=INF))), IMAGE, "annotation.shapes[0].box.x", "must be finite, got inf"),
    (
        "-inf polygon point",
        ann(car(polygon=A.Polygon(exterior=ring((100, 100), (300, 100), (300, -INF), (100, 300))))),
        IMAGE,
        "annotation.shapes[0].polygon.exterior.points[2].y",
        "got -inf",
    ),
    ("nan score", ann(car(box=box(), score=NAN)), IMAGE, "annotation.shapes[0].score", "must be finite"),
    (
        "nan number attribute",
        ann(car(box=box(), attributes=attrs(occluded=False, truncation=NAN))),
        IMAGE,
        "annotation.shapes[0].attributes.truncation",
        "must be finite",
    ),
    (
        "nan quaternion",
        ann(shape("vehicle3d", cuboid=cuboid(q=(1, NAN, 0, 0)))),
        CLOUD,
        "annotation.shapes[0].cuboid.rotation.x",
        "must be finite",
    ),
    (
        "inf cuboid centre",
        ann(shape("vehicle3d", cuboid=A.Cuboid(center=A.Point3(z=INF)))),
        CLOUD,
        "annotation.shapes[0].cuboid.center.z",
        "finite",
    ),
    (
        "nan keypoint",
        ann(person_kps(kp("nose", 1, 1), kp("left_eye", NAN, 1))),
        IMAGE,
        "annotation.shapes[0].keypoints.points[1].x",
        "must be finite",
    ),
    (
        "nan not-labelled keypoint",
        ann(person_kps(kp("nose", NAN, 0, A.VISIBILITY_NOT_LABELED))),
        IMAGE,
        "annotation.shapes[0].keypoints.points[0].x",
        "must be finite",
    ),
    (
        "nan rotated box angle",
        ann(car(rotated_box=A.RotatedBox(cx=100, cy=100, width=10, height=10, angle=NAN))),
        IMAGE,
        "annotation.shapes[0].rotated_box.angle",
        "must be finite",
    ),
    (
        "inf in custom payload",
        ann(
            shape(
                "widget", custom=A.CustomValue(value=struct({"size": 1, "parts": [{"name": "a", "w": INF}]}))
            )
        ),
        IMAGE,
        "annotation.shapes[0].custom.value.parts[0].w",
        "must be finite",
    ),
    (
        "nan polyline point",
        ann(shape("lane", polyline=A.Polyline(points=pts((0, 0), (1, 1), (NAN, 2))))),
        IMAGE,
        "annotation.shapes[0].polyline.points[2].x",
        "must be finite",
    ),
    # bounds
    (
        "box past the right edge",
        ann(car(box=box(x=600, w=100))),
        IMAGE,
        "annotation.shapes[0].box.width",
        "x + width = 700 > 640",
    ),
    (
        "box past the bottom",
        ann(car(box=box(y=470, h=20))),
        IMAGE,
        "annotation.shapes[0].box.height",
        "490 > 480",
    ),
    ("box left of the image", ann(car(box=box(x=-1))), IMAGE, "annotation.shapes[0].box.x", "got -1"),
    ("box of zero width", ann(car(box=box(w=0))), IMAGE, "annotation.shapes[0].box.width", "must be > 0"),
    (
        "polygon point out of frame",
        ann(car(polygon=A.Polygon(exterior=ring((0, 0), (700, 0), (0, 100))))),
        IMAGE,
        "annotation.shapes[0].polygon.exterior.points[1].x",
        "x must be in [0, 640], got 700",
    ),
    (
        "keypoint out of frame",
        ann(person_kps(kp("nose", 5, 900))),
        IMAGE,
        "annotation.shapes[0].keypoints.points[0].y",
        "outside",
    ),
    (
        "rotated box corner out of frame",
        ann(car(rotated_box=A.RotatedBox(cx=15, cy=240, width=40, height=10, angle=math.pi / 4))),
        IMAGE,
        "annotation.shapes[0].rotated_box",
        "corner",
    ),
    (
        "image size incomplete",
        ann(car(box=box())),
        (M.MEDIA_TYPE_IMAGE, M.MediaInfo(width=640)),
        "annotation.shapes[0].box",
        "incomplete",
    ),
    # classes and kinds
    (
        "unknown class",
        ann(shape("dgo", box=box())),
        IMAGE,
        "annotation.shapes[0].label",
        "unknown class 'dgo' (known: car, lane,",
    ),
    (
        "kind not allowed",
        ann(shape("lane", box=box())),
        IMAGE,
        "annotation.shapes[0].box",
        "class 'lane' does not allow box",
    ),
    ("no geometry", ann(car()), IMAGE, "annotation.shapes[0].geometry", "needs a geometry"),
    # polygons
    (
        "bow-tie polygon",
        ann(car(polygon=A.Polygon(exterior=ring((0, 0), (100, 100), (100, 0), (0, 100))))),
        IMAGE,
        "annotation.shapes[0].polygon.exterior",
        "polygon ring self-intersects: edge 0-1 crosses edge 2-3",
    ),
    (
        "polygon touching itself",
        ann(
            car(polygon=A.Polygon(exterior=ring((0, 0), (50, 50), (100, 0), (100, 100), (50, 50), (0, 100))))
        ),
        IMAGE,
        "annotation.shapes[0].polygon.exterior",
        "self-intersects",
    ),
    (
        "polygon doubling back",
        ann(car(polygon=A.Polygon(exterior=ring((0, 0), (100, 0), (50, 0), (50, 50))))),
        IMAGE,
        "annotation.shapes[0].polygon.exterior",
        "doubles back",
    ),
    (
        "collinear polygon",
        ann(car(polygon=A.Polygon(exterior=ring((0, 0), (10, 10), (20, 20), (5, 5))))),
        IMAGE,
        "annotation.shapes[0].polygon.exterior",
        "collinear",
    ),
    (
        "polygon with two points",
        ann(car(polygon=A.Polygon(exterior=ring((0, 0), (10, 10))))),
        IMAGE,
        "annotation.shapes[0].polygon.exterior.points",
        "at least 3 points, got 2",
    ),
    (
        "repeated consecutive point",
        ann(car(polygon=A.Polygon(exterior=ring((0, 0), (10, 0), (10, 0), (10, 10))))),
        IMAGE,
        "annotation.shapes[0].polygon.exterior.points[2]",
        "repeats the previous point (10, 0)",
    ),
    (
        "closing point repeated",
        ann(car(polygon=A.Polygon(exterior=ring((0, 0), (10, 0), (10, 10), (0, 0))))),
        IMAGE,
        "annotation.shapes[0].polygon.exterior.points[3]",
        "closed implicitly",
    ),
    (
        "hole outside the exterior",
        ann(car(polygon=A.Polygon(exterior=SQUARE, holes=[HOLE, ring((150, 150), (350, 150), (150, 200))]))),
        IMAGE,
        "annotation.shapes[0].polygon.holes[1]",
        "hole vertex 1 at (350, 150) is outside the exterior ring",
    ),
    (
        "self-intersecting hole",
        ann(
            car(
                polygon=A.Polygon(
                    exterior=SQUARE, holes=[ring((150, 150), (200, 200), (200, 150), (150, 200))]
                )
            )
        ),
        IMAGE,
        "annotation.shapes[0].polygon.holes[0]",
        "edge 0-1 crosses edge 2-3",
    ),
    (
        "empty multipolygon",
        ann(car(multipolygon=A.MultiPolygon())),
        IMAGE,
        "annotation.shapes[0].multipolygon.polygons",
        "at least one polygon",
    ),
    (
        "bad polygon inside a multipolygon",
        ann(
            car(
                multipolygon=A.MultiPolygon(
                    polygons=[
                        A.Polygon(exterior=SQUARE),
                        A.Polygon(exterior=ring((0, 0), (100, 100), (100, 0), (0, 100))),
                    ]
                )
            )
        ),
        IMAGE,
        "annotation.shapes[0].multipolygon.polygons[1].exterior",
        "crosses",
    ),
    (
        "polyline with one point",
        ann(shape("lane", polyline=A.Polyline(points=pts((1, 1))))),
        IMAGE,
        "annotation.shapes[0].polyline.points",
        "at least 2 points",
    ),
    (
        "image cuboid with three front points",
        ann(
            shape(
                "vehicle3d",
                image_cuboid=A.ImageCuboid(
                    front=pts((1, 1), (2, 2), (3, 1)), back=pts((1, 1), (2, 2), (3, 1), (4, 4))
                ),
            )
        ),
        IMAGE,
        "annotation.shapes[0].image_cuboid.front",
        "exactly 4 points, got 3",
    ),
    # masks
    (
        "mask of the wrong size",
        ann(car(instance_mask=A.InstanceMask(mask=rle(10, 12, [120])))),
        IMAGE,
        "annotation.shapes[0].instance_mask.mask",
        "mask is 10x12 but the image is 480x640",
    ),
    (
        "rle runs that do not add up",
        ann(car(instance_mask=A.InstanceMask(mask=rle(480, 640, [100, FULL - 101])))),
        IMAGE,
        "annotation.shapes[0].instance_mask.mask.counts",
        f"add up to {FULL - 1}, expected {FULL}",
    ),
    (
        "rle without runs",
        ann(car(instance_mask=A.InstanceMask(mask=rle(480, 640, [])))),
        IMAGE,
        "annotation.shapes[0].instance_mask.mask.counts",
        "must not be empty",
    ),
    (
        "bitmap of the wrong length",
        ann(shape("damage", bitmap=A.Bitmap(height=480, width=640, data=b"\x00" * 10))),
        IMAGE,
        "annotation.shapes[0].bitmap.data",
        "needs 38400 bytes",
    ),
    (
        "bitmap of the wrong size",
        ann(shape("damage", bitmap=A.Bitmap(height=48, width=64, data=bytes(48 * 64 // 8)))),
        IMAGE,
        "annotation.shapes[0].bitmap",
        "bitmap is 48x64 but the image is 480x640",
    ),
    # keypoints and skeletons
    (
        "keypoint not in the skeleton",
        ann(person_kps(kp("tail", 5, 5))),
        IMAGE,
        "annotation.shapes[0].keypoints.points[0].name",
        "keypoint 'tail' is not in skeleton 'person' (keypoints: nose, left_eye,",
    ),
    (
        "duplicate keypoint",
        ann(person_kps(kp("nose", 5, 5), kp("nose", 6, 6))),
        IMAGE,
        "annotation.shapes[0].keypoints.points[1].name",
        "duplicate keypoint 'nose'",
    ),
    (
        "skeleton definition mismatch",
        ann(shape("person", skeleton=A.Skeleton(definition="hand", points=[kp("nose", 1, 1)]))),
        IMAGE,
        "annotation.shapes[0].skeleton.definition",
        "does not match class 'person'",
    ),
    (
        "skeleton point from another skeleton",
        ann(
            shape(
                "hand", skeleton=A.Skeleton(definition="hand", points=[kp("wrist", 1, 1), kp("nose", 2, 2)])
            )
        ),
        IMAGE,
        "annotation.shapes[0].skeleton.points[1].name",
        "not in skeleton 'hand'",
    ),
    # point clouds, text, 3D
    (
        "point index out of range",
        ann(shape("ground", point_labels=A.PointLabels(indices=[3, 100_000]))),
        CLOUD,
        "annotation.shapes[0].point_labels.indices[1]",
        "out of range",
    ),
    (
        "duplicate point index",
        ann(shape("ground", point_labels=A.PointLabels(indices=[7, 3, 7, 3]))),
        CLOUD,
        "annotation.shapes[0].point_labels.indices[2]",
        "duplicate index 7 (also indices[0])",
    ),
    (
        "point labels on an image",
        ann(shape("ground", point_labels=A.PointLabels(indices=[1]))),
        IMAGE,
        "annotation.shapes[0].point_labels",
        "point-cloud media",
    ),
    (
        "point labels without a point count",
        ann(shape("ground", point_labels=A.PointLabels(indices=[1]))),
        (M.MEDIA_TYPE_POINT_CLOUD, M.MediaInfo()),
        "annotation.shapes[0].point_labels",
        "point count",
    ),
    (
        "text span past the end",
        ann(shape("entity", text_span=A.TextSpan(start=490, end=501), attributes=attrs(type="per"))),
        TEXT,
        "annotation.shapes[0].text_span.end",
        "past the end of the text (length 500)",
    ),
    (
        "empty text span",
        ann(shape("entity", text_span=A.TextSpan(start=4, end=4), attributes=attrs(type="per"))),
        TEXT,
        "annotation.shapes[0].text_span.end",
        "greater than start",
    ),
    (
        "text span on an image",
        ann(shape("entity", text_span=A.TextSpan(start=0, end=4), attributes=attrs(type="per"))),
        IMAGE,
        "annotation.shapes[0].text_span",
        "text media",
    ),
    (
        "cuboid of zero height",
        ann(shape("vehicle3d", cuboid=cuboid(dims=(4, 2, 0)))),
        CLOUD,
        "annotation.shapes[0].cuboid.dimensions.z",
        "must be > 0",
    ),
    (
        "quaternion not of unit norm",
        ann(shape("vehicle3d", cuboid=cuboid(q=(1, 1, 0, 0)))),
        CLOUD,
        "annotation.shapes[0].cuboid.rotation",
        "unit norm",
    ),
    (
        "cuboid on text",
        ann(shape("vehicle3d", cuboid=cuboid())),
        TEXT,
        "annotation.shapes[0].cuboid",
        "MEDIA_TYPE_TEXT",
    ),
    # custom payloads
    (
        "custom payload below the minimum",
        ann(shape("widget", custom=A.CustomValue(value=struct({"size": -3})))),
        IMAGE,
        "annotation.shapes[0].custom.value.size",
        "-3",
    ),
    (
        "custom payload missing a property",
        ann(shape("widget", custom=A.CustomValue(value=struct({"parts": []})))),
        IMAGE,
        "annotation.shapes[0].custom.value",
        "'size' is a required property",
    ),
    (
        "custom payload wrong nested type",
        ann(
            shape(
                "widget",
                custom=A.CustomValue(value=struct({"size": 1, "parts": [{"name": "a"}, {"name": 5}]})),
            )
        ),
        IMAGE,
        "annotation.shapes[0].custom.value.parts[1].name",
        "is not of type 'string'",
    ),
    # tracks
    (
        "track with unordered frames",
        A.Annotation(
            tracks=[track("t1", "car", (0, car(box=box())), (9, car(box=box())), (4, car(box=box())))]
        ),
        VIDEO,
        "annotation.tracks[0].frames[2].frame",
        "strictly increasing: 4 after 9",
    ),
    (
        "track with a repeated frame",
        A.Annotation(tracks=[track("t1", "car", (3, car(box=box())), (3, car(box=box())))]),
        VIDEO,
        "annotation.tracks[0].frames[1].frame",
        "strictly increasing",
    ),
    (
        "track on an image",
        A.Annotation(tracks=[track("t1", "car", (0, car(box=box())))]),
        IMAGE,
        "annotation.tracks",
        "only allowed on video",
    ),
    (
        "track frame past the end",
        A.Annotation(tracks=[track("t1", "car", (299, car(box=box())), (300, car(box=box())))]),
        VIDEO,
        "annotation.tracks[0].frames[1].frame",
        "past the end of the video (300 frames)",
    ),
    (
        "track frame of another class",
        A.Annotation(tracks=[track("t1", "car", (0, car(box=box())), (1, shape("lane", box=box())))]),
        VIDEO,
        "annotation.tracks[0].frames[1].shape.label",
        "differs from the track's label 'car'",
    ),
    (
        "nan in a track frame",
        A.Annotation(
            tracks=[
                track("t1", "car", (0, car(box=box()))),
                track("t2", "car", *[(f, car(box=box(x=NAN if f == 4 else 10))) for f in range(6)]),
            ]
        ),
        VIDEO,
        "annotation.tracks[1].frames[4].shape.box.x",
        "must be finite, got nan",
    ),
    (
        "duplicate track id",
        A.Annotation(
            tracks=[track("t1", "car", (0, car(box=box()))), track("t1", "car", (0, car(box=box())))]
        ),
        VIDEO,
        "annotation.tracks[1].track_id",
        "duplicate track id 't1'",
    ),
    (
        "track without frames",
        A.Annotation(tracks=[track("t1", "car")]),
        VIDEO,
        "annotation.tracks[0].frames",
        "at least one frame",
    ),
    (
        "track of an unknown class",
        A.Annotation(tracks=[track("t1", "bus", (0, car(box=box())))]),
        VIDEO,
        "annotation.tracks[0].label",
        "unknown class 'bus'",
    ),
    # semantic segmentation
    (
        "segmentation of a class that does not allow it",
        A.Annotation(segmentation=segmentation(("car", rle(480, 640, [FULL])))),
        IMAGE,
        "annotation.segmentation.classes[0].label",
        "does not allow semantic_segmentation",
    ),
    (
        "segmentation mask that does not add up",
        A.Annotation(segmentation=segmentation(("road", rle(480, 640, [FULL])), ("sky", rle(480, 640, [5])))),
        IMAGE,
        "annotation.segmentation.classes[1].mask.counts",
        "add up to 5",
    ),
    # sources and models
    (
        "pre-label without a model",
        ann(car(box=box(), score=0.5), source=A.ANNOTATION_SOURCE_MODEL),
        IMAGE,
        "annotation.model.name",
        "must name the model",
    ),
    (
        "pre-label without a model version",
        ann(car(box=box()), source=A.ANNOTATION_SOURCE_MODEL, model=A.ModelInfo(name="detr")),
        IMAGE,
        "annotation.model.version",
        "version",
    ),
    (
        "human annotation naming a model",
        ann(car(box=box()), source=A.ANNOTATION_SOURCE_HUMAN, model=A.ModelInfo(name="detr", version="1")),
        IMAGE,
        "annotation.model",
        "only model pre-labels",
    ),
    # attributes, scores, ids
    (
        "attribute of the wrong type",
        ann(car(box=box(), attributes=attrs(occluded="yes"))),
        IMAGE,
        "annotation.shapes[0].attributes.occluded",
        "must be a bool, got string 'yes'",
    ),
    (
        "enum attribute outside its options",
        ann(car(box=box(), attributes=attrs(occluded=False, color="plaid"))),
        IMAGE,
        "annotation.shapes[0].attributes.color",
        "must be one of red, blue, white, got string 'plaid'",
    ),
    (
        "required attribute missing",
        ann(car(box=box(), attributes=attrs(color="red"))),
        IMAGE,
        "annotation.shapes[0].attributes.occluded",
        "required attribute 'occluded' is missing",
    ),
    (
        "unknown attribute",
        ann(car(box=box(), attributes=attrs(occluded=False, colour="red"))),
        IMAGE,
        "annotation.shapes[0].attributes.colour",
        "unknown attribute 'colour' for class 'car'",
    ),
    (
        "score above one",
        ann(car(box=box(), score=1.5)),
        IMAGE,
        "annotation.shapes[0].score",
        "must be in [0, 1], got 1.5",
    ),
    ("negative score", ann(car(box=box(), score=-0.1)), IMAGE, "annotation.shapes[0].score", "got -0.1"),
    (
        "duplicate shape id",
        ann(car(id="s1", box=box()), car(id="s1", box=box())),
        IMAGE,
        "annotation.shapes[1].id",
        "duplicate shape id 's1' (also shapes[0])",
    ),
]


@pytest.mark.parametrize(("case", "annotation", "media", "field", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_annotation_is_refused_naming_the_field(
    schema: M.LabelSchema, case: str, annotation: A.Annotation, media: Media, field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        check(annotation, schema, media)
    assert err.value.field == field, str(err.value)
    assert message in err.value.message, str(err.value)


def test_the_field_prefix_is_the_callers(schema: M.LabelSchema) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_annotation(
            ann(car(box=box(w=NAN))), schema=schema, media_type=IMAGE[0], media=IMAGE[1], field="correction"
        )
    assert err.value.field == "correction.shapes[0].box.width"
    assert str(err.value) == "correction.shapes[0].box.width: must be finite, got nan"


def test_an_unknown_class_suggests_nothing_but_lists_the_known_ones(schema: M.LabelSchema) -> None:
    small = M.LabelSchema(
        classes=[
            M.LabelClass(name="car", kinds=[M.ANNOTATION_KIND_BOX]),
            M.LabelClass(name="dog", kinds=[M.ANNOTATION_KIND_BOX]),
        ]
    )
    with pytest.raises(InvalidArgument) as err:
        check(ann(shape("dgo", box=box())), small)
    assert err.value.message == "unknown class 'dgo' (known: car, dog)"


# ------------------------------------------------------------------ label schemas


def _schema_with(mutate: Callable[[M.LabelSchema], object]) -> M.LabelSchema:
    s = make_schema()
    mutate(s)
    return s


def _class(name: str, *kinds: int, **kw: object) -> M.LabelClass:
    return M.LabelClass(name=name, kinds=list(kinds), **kw)  # type: ignore[arg-type]


BAD_SCHEMAS: list[tuple[str, Callable[[M.LabelSchema], object], str, str]] = [
    ("no classes", lambda s: s.ClearField("classes"), "schema.classes", "at least one class"),
    (
        "duplicate class",
        lambda s: s.classes.append(_class("lane", M.ANNOTATION_KIND_BOX)),
        "schema.classes[13].name",
        "duplicate class 'lane' (also classes[1])",
    ),
    (
        "empty class name",
        lambda s: s.classes.append(_class("", M.ANNOTATION_KIND_BOX)),
        "schema.classes[13].name",
        "required",
    ),
    (
        "class name with spaces at the end",
        lambda s: setattr(s.classes[1], "name", "lane "),
        "schema.classes[1].name",
        "whitespace",
    ),
    (
        "class without kinds",
        lambda s: s.classes[1].ClearField("kinds"),
        "schema.classes[1].kinds",
        "at least one",
    ),
    (
        "unspecified kind",
        lambda s: s.classes[1].kinds.append(M.ANNOTATION_KIND_UNSPECIFIED),
        "schema.classes[1].kinds[1]",
        "unspecified",
    ),
    (
        "keypoint class without a skeleton",
        lambda s: setattr(s.classes[3], "skeleton", ""),
        "schema.classes[3].skeleton",
        "must name a skeleton",
    ),
    (
        "keypoint class naming an unknown skeleton",
        lambda s: setattr(s.classes[3], "skeleton", "horse"),
        "schema.classes[3].skeleton",
        "unknown skeleton 'horse'",
    ),
    (
        "custom class without a JSON schema",
        lambda s: setattr(s.classes[10], "json_schema", ""),
        "schema.classes[10].json_schema",
        "needs a JSON schema",
    ),
    (
        "JSON schema that is not JSON",
        lambda s: setattr(s.classes[10], "json_schema", "{type: object"),
        "schema.classes[10].json_schema",
        "not valid JSON",
    ),
    (
        "JSON schema that is not a schema",
        lambda s: setattr(s.classes[10], "json_schema", '{"type": 5}'),
        "schema.classes[10].json_schema",
        "not a valid JSON Schema",
    ),
    (
        "duplicate attribute",
        lambda s: s.classes[0].attributes.append(
            M.AttributeDefinition(name="color", type=M.ATTRIBUTE_TYPE_TEXT)
        ),
        "schema.classes[0].attributes[4].name",
        "duplicate attribute 'color'",
    ),
    (
        "enum attribute without options",
        lambda s: s.classes[0].attributes.append(
            M.AttributeDefinition(name="trim", type=M.ATTRIBUTE_TYPE_ENUM)
        ),
        "schema.classes[0].attributes[4].options",
        "at least one option",
    ),
    (
        "attribute without a type",
        lambda s: s.classes[0].attributes.append(M.AttributeDefinition(name="trim")),
        "schema.classes[0].attributes[4].type",
        "unspecified",
    ),
    (
        "duplicate skeleton",
        lambda s: s.skeletons.append(M.SkeletonDefinition(name="hand", keypoints=["a"])),
        "schema.skeletons[2].name",
        "duplicate skeleton 'hand'",
    ),
    (
        "skeleton edge to an unknown keypoint",
        lambda s: s.skeletons[0].edges.append(_edge("nose", "tail")),
        "schema.skeletons[0].edges[5].to",
        "unknown keypoint 'tail'",
    ),
    (
        "skeleton without keypoints",
        lambda s: s.skeletons[1].ClearField("keypoints"),
        "schema.skeletons[1].keypoints",
        "at least one keypoint",
    ),
    (
        "duplicate keypoint in a skeleton",
        lambda s: s.skeletons[1].keypoints.append("thumb"),
        "schema.skeletons[1].keypoints[3]",
        "duplicate keypoint 'thumb'",
    ),
    (
        "sigmas of the wrong length",
        lambda s: s.skeletons[0].sigmas.append(0.1),
        "schema.skeletons[0].sigmas",
        "one sigma per keypoint (7)",
    ),
    (
        "non-positive sigma",
        lambda s: s.skeletons[0].sigmas.__setitem__(2, 0.0),
        "schema.skeletons[0].sigmas[2]",
        "must be > 0",
    ),
    (
        "nan sigma",
        lambda s: s.skeletons[0].sigmas.__setitem__(2, NAN),
        "schema.skeletons[0].sigmas[2]",
        "must be finite",
    ),
    (
        "duplicate reject reason",
        lambda s: s.reject_reasons.append("loose_box"),
        "schema.reject_reasons[3]",
        "duplicate reject reason",
    ),
    ("empty reject reason", lambda s: s.reject_reasons.append(""), "schema.reject_reasons[3]", "non-empty"),
]


@pytest.mark.parametrize(("case", "mutate", "field", "message"), BAD_SCHEMAS, ids=[b[0] for b in BAD_SCHEMAS])
def test_bad_label_schema_is_refused_naming_the_field(
    case: str, mutate: Callable[[M.LabelSchema], object], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_label_schema(_schema_with(mutate))
    assert err.value.field == field, str(err.value)
    assert message in err.value.message, str(err.value)


# ------------------------------------------------------------------ task specs


def image_task(**kw: object) -> M.TaskSpec:
    spec = M.TaskSpec(
        task_id="batch-1-000001",
        data_uri="s3://bucket/frames/000001.jpg",
        media_type=M.MEDIA_TYPE_IMAGE,
        media=M.MediaInfo(width=640, height=480),
        metadata={"camera": "front-left", "city": "Warsaw"},
        priority=10,
        required_skills=["driving", "night"],
        overlap=3,
    )
    for name, value in kw.items():
        if isinstance(value, M.MediaInfo | A.Annotation | timestamp_pb2.Timestamp):
            getattr(spec, name).CopyFrom(value)
        elif isinstance(value, list):
            spec.ClearField(name)  # type: ignore[arg-type]
            getattr(spec, name).extend(value)
        elif isinstance(value, dict):
            spec.ClearField(name)  # type: ignore[arg-type]
            getattr(spec, name).update(value)
        else:
            setattr(spec, name, value)
    return spec


MODEL_PRELABEL = ann(
    car(box=box(), score=0.8), source=A.ANNOTATION_SOURCE_MODEL, model=A.ModelInfo(name="detr", version="7")
)

VALID_TASKS: list[tuple[str, M.TaskSpec]] = [
    ("image", image_task()),
    ("no task id", image_task(task_id="")),
    (
        "video",
        image_task(
            media_type=M.MEDIA_TYPE_VIDEO, media=M.MediaInfo(width=1920, height=1080, frame_count=300)
        ),
    ),
    ("point cloud", image_task(media_type=M.MEDIA_TYPE_POINT_CLOUD, media=M.MediaInfo(point_count=120_000))),
    ("text", image_task(media_type=M.MEDIA_TYPE_TEXT, media=M.MediaInfo(text_length=4000))),
    ("audio", image_task(media_type=M.MEDIA_TYPE_AUDIO, media=M.MediaInfo())),
    ("deadline", image_task(deadline=timestamp_pb2.Timestamp(seconds=1_767_225_600))),
    ("model pre-label", image_task(prelabel=MODEL_PRELABEL)),
    ("extreme priority and overlap", image_task(priority=-1000, overlap=100)),
]


@pytest.mark.parametrize(("case", "spec"), VALID_TASKS, ids=[v[0] for v in VALID_TASKS])
def test_valid_task_spec_passes(schema: M.LabelSchema, case: str, spec: M.TaskSpec) -> None:
    validate_task_spec(spec, schema=schema)


BAD_TASKS: list[tuple[str, M.TaskSpec, str, str]] = [
    ("bad task id", image_task(task_id="has space"), "task.task_id", "not a valid id"),
    ("no data uri", image_task(data_uri=""), "task.data_uri", "required"),
    ("data uri too long", image_task(data_uri="s3://b/" + "x" * 2042), "task.data_uri", "at most 2048"),
    (
        "unspecified media type",
        image_task(media_type=M.MEDIA_TYPE_UNSPECIFIED),
        "task.media_type",
        "MEDIA_TYPE_UNSPECIFIED",
    ),
    ("image without a width", image_task(media=M.MediaInfo(height=480)), "task.media.width", "width"),
    ("image without a height", image_task(media=M.MediaInfo(width=640)), "task.media.height", "height"),
    (
        "video without a frame count",
        image_task(media_type=M.MEDIA_TYPE_VIDEO, media=M.MediaInfo(width=640, height=480)),
        "task.media.frame_count",
        "frame count",
    ),
    (
        "point cloud without points",
        image_task(media_type=M.MEDIA_TYPE_POINT_CLOUD, media=M.MediaInfo()),
        "task.media.point_count",
        "point count",
    ),
    (
        "text without a length",
        image_task(media_type=M.MEDIA_TYPE_TEXT, media=M.MediaInfo()),
        "task.media.text_length",
        "length",
    ),
    ("overlap too high", image_task(overlap=101), "task.overlap", "at most 100, got 101"),
    ("priority too high", image_task(priority=1001), "task.priority", "[-1000, 1000], got 1001"),
    ("priority too low", image_task(priority=-1001), "task.priority", "got -1001"),
    ("empty skill", image_task(required_skills=["driving", ""]), "task.required_skills[1]", "non-empty"),
    (
        "duplicate skill",
        image_task(required_skills=["a", "b", "a"]),
        "task.required_skills[2]",
        "duplicate skill 'a'",
    ),
    ("empty metadata key", image_task(metadata={"": "x"}), "task.metadata", "non-empty"),
    (
        "metadata too large",
        image_task(metadata={"blob": "x" * (64 * 1024)}),
        "task.metadata",
        "at most 65536 bytes",
    ),
    (
        "deadline at the epoch",
        image_task(deadline=timestamp_pb2.Timestamp(seconds=0)),
        "task.deadline",
        "1970",
    ),
    (
        "human pre-label",
        image_task(prelabel=ann(car(box=box()), source=A.ANNOTATION_SOURCE_HUMAN)),
        "task.prelabel.source",
        "from a model",
    ),
    (
        "pre-label without a model",
        image_task(prelabel=ann(car(box=box()), source=A.ANNOTATION_SOURCE_MODEL)),
        "task.prelabel.model.name",
        "must name the model",
    ),
    (
        "pre-label with bad geometry",
        image_task(
            prelabel=ann(
                car(box=box(w=-5)), source=A.ANNOTATION_SOURCE_MODEL, model=A.ModelInfo(name="m", version="1")
            )
        ),
        "task.prelabel.shapes[0].box.width",
        "must be > 0, got -5",
    ),
]


@pytest.mark.parametrize(("case", "spec", "field", "message"), BAD_TASKS, ids=[b[0] for b in BAD_TASKS])
def test_bad_task_spec_is_refused_naming_the_field(
    schema: M.LabelSchema, case: str, spec: M.TaskSpec, field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_task_spec(spec, schema=schema)
    assert err.value.field == field, str(err.value)
    assert message in err.value.message, str(err.value)


def test_task_fields_are_prefixed_with_the_batch_index(schema: M.LabelSchema) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_task_spec(image_task(media=M.MediaInfo(height=480)), schema=schema, field="tasks[3]")
    assert err.value.field == "tasks[3].media.width"


def test_prelabel_geometry_is_only_checked_against_a_schema() -> None:
    bad_geometry = ann(
        car(box=box(w=-5)), source=A.ANNOTATION_SOURCE_MODEL, model=A.ModelInfo(name="m", version="1")
    )
    validate_task_spec(image_task(prelabel=bad_geometry), schema=None)


# ------------------------------------------------------------------ ids


@pytest.mark.parametrize("value", ["t1", "A", "batch-7-000012", "proj_1.v2", "0" * 128])
def test_valid_ids(value: str) -> None:
    validate_id(value, field="task_id")


@pytest.mark.parametrize("value", ["", "-t1", ".t", "has space", "t1\n", "a/b", "é", "0" * 129])
def test_invalid_ids(value: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_id(value, field="batch_id")
    assert err.value.field == "batch_id"


# ------------------------------------------------------------------ properties

_angles = st.lists(st.integers(min_value=0, max_value=3599), min_size=3, max_size=80, unique=True).map(sorted)


def _convex(angles: list[int], cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(a * math.pi / 1800), cy + r * math.sin(a * math.pi / 1800)) for a in angles]


def _polygon_annotation(points: list[tuple[float, float]]) -> A.Annotation:
    return ann(car(polygon=A.Polygon(exterior=ring(*points))))


@settings(max_examples=200, deadline=None)
@given(
    angles=_angles,
    cx=st.floats(min_value=100, max_value=540),
    cy=st.floats(min_value=100, max_value=380),
    r=st.floats(min_value=5, max_value=99),
)
def test_convex_polygons_always_pass(angles: list[int], cx: float, cy: float, r: float) -> None:
    check(_polygon_annotation(_convex(angles, cx, cy, r)), SCHEMA)


@settings(max_examples=200, deadline=None)
@given(
    angles=_angles,
    cx=st.floats(min_value=100, max_value=540),
    cy=st.floats(min_value=100, max_value=380),
    r=st.floats(min_value=5, max_value=99),
    data=st.data(),
)
def test_a_non_finite_coordinate_anywhere_is_refused_at_its_index(
    angles: list[int], cx: float, cy: float, r: float, data: st.DataObject
) -> None:
    points = _convex(angles, cx, cy, r)
    k = data.draw(st.integers(min_value=0, max_value=len(points) - 1), label="index")
    coord = data.draw(st.sampled_from(["x", "y"]), label="coordinate")
    bad = data.draw(st.sampled_from([NAN, INF, -INF]), label="value")
    x, y = points[k]
    points[k] = (bad, y) if coord == "x" else (x, bad)
    with pytest.raises(InvalidArgument) as err:
        check(_polygon_annotation(points), SCHEMA)
    assert err.value.field == f"annotation.shapes[0].polygon.exterior.points[{k}].{coord}"
    assert f"[{k}]" in err.value.field
    assert "must be finite" in err.value.message


def _orient(a: tuple[Fraction, Fraction], b: tuple[Fraction, Fraction], c: tuple[Fraction, Fraction]) -> int:
    d = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return (d > 0) - (d < 0)


def _on_segment(
    p: tuple[Fraction, Fraction], a: tuple[Fraction, Fraction], b: tuple[Fraction, Fraction]
) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def _segments_meet(
    a: tuple[Fraction, Fraction],
    b: tuple[Fraction, Fraction],
    c: tuple[Fraction, Fraction],
    d: tuple[Fraction, Fraction],
) -> bool:
    o1, o2, o3, o4 = _orient(a, b, c), _orient(a, b, d), _orient(c, d, a), _orient(c, d, b)
    if o1 * o2 < 0 and o3 * o4 < 0:
        return True
    return (
        (o1 == 0 and _on_segment(c, a, b))
        or (o2 == 0 and _on_segment(d, a, b))
        or (o3 == 0 and _on_segment(a, c, d))
        or (o4 == 0 and _on_segment(b, c, d))
    )


def _simple_by_brute_force(points: list[tuple[float, float]]) -> bool:
    """O(n^2) exact reference: distinct consecutive points, positive area, only adjacent edges meet,
    and they meet only at their shared vertex."""
    p = [(Fraction(x), Fraction(y)) for x, y in points]
    n = len(p)
    if any(p[i] == p[(i + 1) % n] for i in range(n)):
        return False
    if all(_orient(p[0], p[1], q) == 0 for q in p):  # p[1] != p[0], checked above
        return False
    for i in range(n):
        a, b, c = p[i - 1], p[i], p[(i + 1) % n]
        # adjacent edges a-b and b-c overlap beyond b iff they are collinear and fold back
        if _orient(a, b, c) == 0 and ((c[0] - b[0]) * (b[0] - a[0]) + (c[1] - b[1]) * (b[1] - a[1])) < 0:
            return False
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue
            if _segments_meet(p[i], p[(i + 1) % n], p[j], p[(j + 1) % n]):
                return False
    return True


@settings(max_examples=400, deadline=None)
@given(
    grid=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=3, max_size=12),
    scale=st.sampled_from([1.0, 0.1, 7.3]),
)
def test_simplicity_agrees_with_an_exact_brute_force_reference(
    grid: list[tuple[int, int]], scale: float
) -> None:
    # scale 0.1 and 7.3 give coordinates that are not dyadic, exercising the exact fallback
    points = [(x * scale, y * scale) for x, y in grid]
    expected = _simple_by_brute_force(points)
    try:
        check(_polygon_annotation(points), SCHEMA, IMAGE_UNKNOWN_SIZE)
        accepted = True
    except InvalidArgument as exc:
        assert exc.field.startswith("annotation.shapes[0].polygon.exterior"), str(exc)
        accepted = False
    assert accepted == expected, points


def test_a_thousand_vertex_simple_polygon_validates(schema: M.LabelSchema) -> None:
    n = 1000
    points = []
    for k in range(n):
        t = 2 * math.pi * k / n
        r = (
            150 + 60 * math.sin(9 * t) + 10 * math.cos(31 * t)
        )  # star-shaped around the centre: simple, not convex
        points.append((320 + r * math.cos(t), 240 + r * math.sin(t)))
    check(_polygon_annotation(points), schema)
    # the same ring with two vertices swapped crosses itself
    points[10], points[500] = points[500], points[10]
    with pytest.raises(InvalidArgument) as err:
        check(_polygon_annotation(points), schema)
    assert err.value.field == "annotation.shapes[0].polygon.exterior"
    assert "self-intersects" in err.value.message


def _rotated_comb(teeth: int, angle: float) -> list[tuple[float, float]]:
    """A comb with long thin teeth, rotated: every edge's bounding box overlaps many others."""
    points: list[tuple[float, float]] = []
    for i in range(teeth):
        x0 = i * 0.4
        points += [(x0, 300.0), (x0 + 0.2, 300.0), (x0 + 0.2, 5.0), (x0 + 0.4, 5.0)]
    points[-1] = (teeth * 0.4, 300.0)
    points += [(teeth * 0.4, 0.0), (0.0, 0.0)]
    c, s = math.cos(angle), math.sin(angle)
    return [(400 + x * c - y * s, 100 + x * s + y * c) for x, y in points]


@pytest.mark.parametrize("angle", [0.0, 0.3, math.pi / 4, 2.0])
def test_a_rotated_comb_validates_and_a_broken_one_is_caught(angle: float) -> None:
    points = _rotated_comb(300, angle)
    check(_polygon_annotation(points), SCHEMA, IMAGE_UNKNOWN_SIZE)
    # bend the tip of tooth 100 into tooth 101
    x, y = points[401]
    points[401] = (x + 0.3 * math.cos(angle), y + 0.3 * math.sin(angle))
    with pytest.raises(InvalidArgument) as err:
        check(_polygon_annotation(points), SCHEMA, IMAGE_UNKNOWN_SIZE)
    assert err.value.field == "annotation.shapes[0].polygon.exterior"
    assert "self-intersects" in err.value.message


def test_a_pathological_ring_is_refused_rather_than_checked_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "MAX_CANDIDATE_PAIRS", 10_000)
    n = 600  # long spikes converging on the centre: edge extents overlap pairwise in every direction
    points = [
        (
            320 + (230 if k % 2 == 0 else 1) * math.cos(2 * math.pi * k / n),
            240 + (230 if k % 2 == 0 else 1) * math.sin(2 * math.pi * k / n),
        )
        for k in range(n)
    ]
    with pytest.raises(InvalidArgument) as err:
        check(_polygon_annotation(points), SCHEMA)
    assert err.value.field == "annotation.shapes[0].polygon.exterior"
    assert "too complex" in err.value.message
    monkeypatch.undo()
    check(_polygon_annotation(points), SCHEMA)
