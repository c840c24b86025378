"""Input validation for label schemas, annotations and task specs.

Every check raises `InvalidArgument` for the FIRST problem found, with a precise field path
(`annotation.shapes[2].box.width`, `annotation.tracks[1].frames[4].shape.label`,
`schema.classes[3].skeleton`) and a plain-English message naming the bad value.

The module is pure (no I/O, no clock) and fast: polygon rings are checked with numpy. Self
intersection uses a sweep-and-prune over the edges' extents (vectorised candidate generation
along whichever of eight directions yields the fewest candidates, in bounded chunks) followed
by exact segment tests. Orientation signs are exact (a floating-point filter with an exact
integer fallback for the few near-zero cases), so collinear and touching edges are decided
correctly.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, NoReturn

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format, struct_pb2
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing.exceptions import Unresolvable

from coordinator._pb.labelweave.events.v1 import annotation_pb2, model_pb2
from coordinator.domain.ids import check_id
from coordinator.errors import InvalidArgument

A = annotation_pb2
M = model_pb2

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SignArray = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]

__all__ = ["validate_annotation", "validate_id", "validate_label_schema", "validate_task_spec"]

# ------------------------------------------------------------------ constants

ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

MAX_DATA_URI: Final = 2048
MAX_OVERLAP: Final = 100
MAX_EXPECTED_SECONDS: Final = 86_400  # a task longer than any shift could never be routed
PRIORITY_RANGE: Final = (-1000, 1000)
MAX_METADATA_BYTES: Final = 64 * 1024
QUATERNION_TOLERANCE: Final = 1e-6
# Work bound for the self-intersection check (about a second of numpy); see `_first_crossing`.
MAX_CANDIDATE_PAIRS: Final = 1 << 25
# Slack for bounds computed from several numbers (box right edge, rotated-box corners), in pixels.
_COMPUTED_SLACK: Final = 1e-6
_MAX_TIMESTAMP_SECONDS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z

_KIND_OF: Final[dict[str, M.AnnotationKind.ValueType]] = {
    "box": M.ANNOTATION_KIND_BOX,
    "rotated_box": M.ANNOTATION_KIND_ROTATED_BOX,
    "image_cuboid": M.ANNOTATION_KIND_IMAGE_CUBOID,
    "cuboid": M.ANNOTATION_KIND_CUBOID,
    "polygon": M.ANNOTATION_KIND_POLYGON,
    "multipolygon": M.ANNOTATION_KIND_MULTIPOLYGON,
    "polyline": M.ANNOTATION_KIND_POLYLINE,
    "keypoints": M.ANNOTATION_KIND_KEYPOINTS,
    "skeleton": M.ANNOTATION_KIND_SKELETON,
    "instance_mask": M.ANNOTATION_KIND_INSTANCE_MASK,
    "bitmap": M.ANNOTATION_KIND_BITMAP,
    "point_labels": M.ANNOTATION_KIND_POINT_LABELS,
    "classification": M.ANNOTATION_KIND_CLASSIFICATION,
    "text": M.ANNOTATION_KIND_TEXT,
    "text_span": M.ANNOTATION_KIND_TEXT_SPAN,
    "custom": M.ANNOTATION_KIND_CUSTOM,
}
_KIND_NAME: Final[dict[int, str]] = {
    **{int(v): k for k, v in _KIND_OF.items()},
    int(M.ANNOTATION_KIND_SEMANTIC_SEGMENTATION): "semantic_segmentation",
}
_SKELETON_KINDS: Final = frozenset({int(M.ANNOTATION_KIND_KEYPOINTS), int(M.ANNOTATION_KIND_SKELETON)})
_VISIBILITIES: Final = frozenset(
    {int(A.VISIBILITY_NOT_LABELED), int(A.VISIBILITY_OCCLUDED), int(A.VISIBILITY_VISIBLE)}
)
_ATTRIBUTE_TYPES: Final = frozenset(
    {
        int(M.ATTRIBUTE_TYPE_BOOL),
        int(M.ATTRIBUTE_TYPE_NUMBER),
        int(M.ATTRIBUTE_TYPE_TEXT),
        int(M.ATTRIBUTE_TYPE_ENUM),
    }
)
_SOURCES: Final = frozenset(
    {int(A.ANNOTATION_SOURCE_UNSPECIFIED), int(A.ANNOTATION_SOURCE_HUMAN), int(A.ANNOTATION_SOURCE_MODEL)}
)
_MEDIA_TYPES: Final = frozenset(
    {
        int(M.MEDIA_TYPE_IMAGE),
        int(M.MEDIA_TYPE_VIDEO),
        int(M.MEDIA_TYPE_POINT_CLOUD),
        int(M.MEDIA_TYPE_TEXT),
        int(M.MEDIA_TYPE_AUDIO),
    }
)
_FRAMED_MEDIA: Final = frozenset({int(M.MEDIA_TYPE_IMAGE), int(M.MEDIA_TYPE_VIDEO)})
_CUBOID_MEDIA: Final = frozenset(
    {int(M.MEDIA_TYPE_POINT_CLOUD), int(M.MEDIA_TYPE_IMAGE), int(M.MEDIA_TYPE_VIDEO)}
)

_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# ------------------------------------------------------------------ small helpers


def _fail(field: str, message: str) -> NoReturn:
    raise InvalidArgument(message, field=field)


def _num(v: float) -> str:
    """A number for a message: integers without `.0`, everything else as repr (`nan`, `inf`, `0.5`)."""
    if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _show(s: str, limit: int = 80) -> str:
    r = repr(s)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def _listing(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown or "none"


def _key(path: str, key: str) -> str:
    """`path.key` for identifier-like keys, `path["odd key"]` otherwise."""
    return f"{path}.{key}" if _IDENT_RE.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def _finite(v: float, field: str) -> None:
    if not math.isfinite(v):
        _fail(field, f"must be finite, got {_num(v)}")


def _positive(v: float, field: str) -> None:
    _finite(v, field)
    if not v > 0:
        _fail(field, f"must be > 0, got {_num(v)}")


def _media_type_name(v: int) -> str:
    try:
        return M.MediaType.Name(v)  # type: ignore[arg-type]
    except ValueError:
        return f"media type {v}"


def _media_noun(media_type: int) -> str:
    if media_type == M.MEDIA_TYPE_IMAGE:
        return "image"
    if media_type == M.MEDIA_TYPE_VIDEO:
        return "video frame"
    return "media"


def _kinds_listing(kinds: Iterable[int]) -> str:
    return _listing([_KIND_NAME.get(int(k), str(int(k))) for k in kinds])


def _describe(value: struct_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return f"number {_num(value.number_value)}"
    if kind == "string_value":
        return f"string {_show(value.string_value)}"
    if kind == "bool_value":
        return f"bool {'true' if value.bool_value else 'false'}"
    if kind == "struct_value":
        return "an object"
    if kind == "list_value":
        return "a list"
    return "null"


def _check_value_finite(value: struct_pb2.Value, path: str) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        _finite(value.number_value, path)
    elif kind == "struct_value":
        _check_struct_finite(value.struct_value, path)
    elif kind == "list_value":
        for i, item in enumerate(value.list_value.values):
            _check_value_finite(item, f"{path}[{i}]")


def _check_struct_finite(struct: struct_pb2.Struct, path: str) -> None:
    for key in sorted(struct.fields):
        _check_value_finite(struct.fields[key], _key(path, key))


# ------------------------------------------------------------------ ids


def validate_id(value: str, *, field: str) -> None:
    """Ids follow the one rule of `coordinator.domain.ids` (no `:`, which separates stream kinds)."""
    check_id(value, field)


# ------------------------------------------------------------------ label schema


def validate_label_schema(schema: model_pb2.LabelSchema, *, field: str = "schema") -> None:
    if not schema.classes:
        _fail(f"{field}.classes", "a label schema needs at least one class")
    skeleton_names = {s.name for s in schema.skeletons}
    seen_classes: dict[str, int] = {}
    for i, cls in enumerate(schema.classes):
        _check_class(cls, f"{field}.classes[{i}]", seen_classes, skeleton_names, i)
    seen_skeletons: dict[str, int] = {}
    for i, skel in enumerate(schema.skeletons):
        _check_skeleton_definition(skel, f"{field}.skeletons[{i}]", seen_skeletons, i)
    seen_reasons: dict[str, int] = {}
    for i, reason in enumerate(schema.reject_reasons):
        path = f"{field}.reject_reasons[{i}]"
        if not reason.strip():
            _fail(path, "reject reasons must be non-empty")
        if reason in seen_reasons:
            _fail(
                path, f"duplicate reject reason {_show(reason)} (also reject_reasons[{seen_reasons[reason]}])"
            )
        seen_reasons[reason] = i


def _check_class(
    cls: model_pb2.LabelClass, path: str, seen: dict[str, int], skeleton_names: set[str], index: int
) -> None:
    if not cls.name:
        _fail(f"{path}.name", "class name is required")
    if cls.name != cls.name.strip():
        _fail(f"{path}.name", f"class name {_show(cls.name)} has leading or trailing whitespace")
    if cls.name in seen:
        _fail(f"{path}.name", f"duplicate class {_show(cls.name)} (also classes[{seen[cls.name]}])")
    seen[cls.name] = index
    if not cls.kinds:
        _fail(f"{path}.kinds", f"class {_show(cls.name)} needs at least one annotation kind")
    seen_kinds: set[int] = set()
    for j, kind in enumerate(cls.kinds):
        if int(kind) not in _KIND_NAME:
            _fail(f"{path}.kinds[{j}]", f"unknown or unspecified annotation kind {int(kind)}")
        if int(kind) in seen_kinds:
            _fail(f"{path}.kinds[{j}]", f"duplicate annotation kind {_KIND_NAME[int(kind)]}")
        seen_kinds.add(int(kind))
    if seen_kinds & _SKELETON_KINDS and not cls.skeleton:
        _fail(
            f"{path}.skeleton", f"class {_show(cls.name)} allows keypoints/skeleton and must name a skeleton"
        )
    if cls.skeleton and cls.skeleton not in skeleton_names:
        _fail(
            f"{path}.skeleton",
            f"unknown skeleton {_show(cls.skeleton)} (defined: {_listing(sorted(skeleton_names))})",
        )
    if M.ANNOTATION_KIND_CUSTOM in seen_kinds:
        _check_json_schema_text(cls.json_schema, f"{path}.json_schema", cls.name)
    seen_attrs: dict[str, int] = {}
    for j, attr in enumerate(cls.attributes):
        ap = f"{path}.attributes[{j}]"
        if not attr.name:
            _fail(f"{ap}.name", "attribute name is required")
        if attr.name in seen_attrs:
            _fail(
                f"{ap}.name",
                f"duplicate attribute {_show(attr.name)} in class {_show(cls.name)}"
                f" (also attributes[{seen_attrs[attr.name]}])",
            )
        seen_attrs[attr.name] = j
        if int(attr.type) not in _ATTRIBUTE_TYPES:
            _fail(f"{ap}.type", f"unknown or unspecified attribute type {int(attr.type)}")
        if attr.type == M.ATTRIBUTE_TYPE_ENUM and not attr.options:
            _fail(f"{ap}.options", f"enum attribute {_show(attr.name)} needs at least one option")
        seen_options: set[str] = set()
        for k, option in enumerate(attr.options):
            if not option:
                _fail(f"{ap}.options[{k}]", "options must be non-empty")
            if option in seen_options:
                _fail(f"{ap}.options[{k}]", f"duplicate option {_show(option)}")
            seen_options.add(option)


def _check_json_schema_text(text: str, path: str, class_name: str) -> None:
    if not text.strip():
        _fail(path, f"class {_show(class_name)} allows custom payloads and needs a JSON schema")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(path, f"JSON schema is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    try:
        Draft202012Validator.check_schema(doc)
    except SchemaError as exc:
        _fail(path, f"not a valid JSON Schema (draft 2020-12): {exc.message}")


def _check_skeleton_definition(
    skel: model_pb2.SkeletonDefinition, path: str, seen: dict[str, int], index: int
) -> None:
    if not skel.name:
        _fail(f"{path}.name", "skeleton name is required")
    if skel.name in seen:
        _fail(f"{path}.name", f"duplicate skeleton {_show(skel.name)} (also skeletons[{seen[skel.name]}])")
    seen[skel.name] = index
    if not skel.keypoints:
        _fail(f"{path}.keypoints", f"skeleton {_show(skel.name)} needs at least one keypoint")
    keypoints: dict[str, int] = {}
    for j, name in enumerate(skel.keypoints):
        if not name:
            _fail(f"{path}.keypoints[{j}]", "keypoint names must be non-empty")
        if name in keypoints:
            _fail(
                f"{path}.keypoints[{j}]",
                f"duplicate keypoint {_show(name)} (also keypoints[{keypoints[name]}])",
            )
        keypoints[name] = j
    for j, edge in enumerate(skel.edges):
        for end in ("from", "to"):
            name = getattr(edge, end)
            if name not in keypoints:
                _fail(
                    f"{path}.edges[{j}].{end}",
                    f"edge refers to unknown keypoint {_show(name)}"
                    f" (keypoints: {_listing(list(skel.keypoints))})",
                )
        if getattr(edge, "from") == edge.to:
            _fail(f"{path}.edges[{j}]", f"edge connects keypoint {_show(edge.to)} to itself")
    if skel.sigmas and len(skel.sigmas) != len(skel.keypoints):
        _fail(
            f"{path}.sigmas",
            f"expected one sigma per keypoint ({len(skel.keypoints)}) or none, got {len(skel.sigmas)}",
        )
    for j, sigma in enumerate(skel.sigmas):
        _positive(sigma, f"{path}.sigmas[{j}]")


# ------------------------------------------------------------------ annotation: context


class _Context:
    """What every shape check needs: the schema indexed by name, and the media item."""

    __slots__ = ("classes", "media", "media_type", "names", "skeletons")

    def __init__(self, schema: model_pb2.LabelSchema, media_type: int, media: model_pb2.MediaInfo) -> None:
        self.classes: dict[str, model_pb2.LabelClass] = {}
        for cls in schema.classes:
            self.classes.setdefault(cls.name, cls)
        self.names = [cls.name for cls in schema.classes]
        self.skeletons: dict[str, model_pb2.SkeletonDefinition] = {}
        for skel in schema.skeletons:
            self.skeletons.setdefault(skel.name, skel)
        self.media_type = int(media_type)
        self.media = media

    def class_(self, label: str, field: str) -> model_pb2.LabelClass:
        cls = self.classes.get(label)
        if cls is None:
            if not label:
                _fail(field, f"label is required (known: {_listing(self.names)})")
            _fail(field, f"unknown class {_show(label)} (known: {_listing(self.names)})")
        return cls

    def frame(self, field: str) -> tuple[float, float] | None:
        """(width, height) when the media has a known size; None when bounds cannot be checked."""
        w, h = self.media.width, self.media.height
        if w > 0 and h > 0:
            return float(w), float(h)
        if self.media_type in _FRAMED_MEDIA and (w > 0 or h > 0):
            _fail(field, f"cannot check bounds: the {self.noun} size is incomplete (width {w}, height {h})")
        return None

    @property
    def noun(self) -> str:
        return _media_noun(self.media_type)

    def skeleton_of(self, cls: model_pb2.LabelClass, field: str) -> model_pb2.SkeletonDefinition:
        skel = self.skeletons.get(cls.skeleton)
        if skel is None:
            _fail(
                field, f"class {_show(cls.name)} has no skeleton definition (skeleton {_show(cls.skeleton)})"
            )
        return skel


# ------------------------------------------------------------------ annotation


def validate_annotation(
    annotation: annotation_pb2.Annotation,
    *,
    schema: model_pb2.LabelSchema,
    media_type: model_pb2.MediaType.ValueType,
    media: model_pb2.MediaInfo,
    field: str = "annotation",
) -> None:
    ctx = _Context(schema, media_type, media)

    source = int(annotation.source)
    if source not in _SOURCES:
        _fail(f"{field}.source", f"unknown annotation source {source}")
    if source == A.ANNOTATION_SOURCE_MODEL:
        if not annotation.model.name:
            _fail(f"{field}.model.name", "model pre-labels must name the model")
        if not annotation.model.version:
            _fail(f"{field}.model.version", "model pre-labels must give the model version")
    elif annotation.model.name or annotation.model.version:
        _fail(f"{field}.model", "only model pre-labels (source MODEL) may name a model")

    ids: dict[str, int] = {}
    for i, shape in enumerate(annotation.shapes):
        path = f"{field}.shapes[{i}]"
        _check_shape(shape, path, ctx, label=shape.label)
        if shape.id:
            if shape.id in ids:
                _fail(f"{path}.id", f"duplicate shape id {_show(shape.id)} (also shapes[{ids[shape.id]}])")
            ids[shape.id] = i

    seg_seen: dict[str, int] = {}
    for i, seg in enumerate(annotation.segmentation.classes):
        path = f"{field}.segmentation.classes[{i}]"
        cls = ctx.class_(seg.label, f"{path}.label")
        if M.ANNOTATION_KIND_SEMANTIC_SEGMENTATION not in cls.kinds:
            _fail(
                f"{path}.label",
                f"class {_show(cls.name)} does not allow semantic_segmentation"
                f" (allowed: {_kinds_listing(cls.kinds)})",
            )
        if seg.label in seg_seen:
            _fail(
                f"{path}.label", f"duplicate class {_show(seg.label)} (also classes[{seg_seen[seg.label]}])"
            )
        seg_seen[seg.label] = i
        _check_rle(seg.mask, f"{path}.mask", ctx)

    if annotation.tracks:
        _check_tracks(annotation.tracks, f"{field}.tracks", ctx)


def _check_tracks(tracks: Sequence[annotation_pb2.Track], path: str, ctx: _Context) -> None:
    if ctx.media_type != M.MEDIA_TYPE_VIDEO:
        _fail(path, f"tracks are only allowed on video media, got {_media_type_name(ctx.media_type)}")
    frame_count = ctx.media.frame_count
    seen: dict[str, int] = {}
    for i, track in enumerate(tracks):
        tp = f"{path}[{i}]"
        if not track.track_id:
            _fail(f"{tp}.track_id", "required")
        if track.track_id in seen:
            _fail(
                f"{tp}.track_id",
                f"duplicate track id {_show(track.track_id)} (also tracks[{seen[track.track_id]}])",
            )
        seen[track.track_id] = i
        ctx.class_(track.label, f"{tp}.label")
        if not track.frames:
            _fail(f"{tp}.frames", "a track needs at least one frame")
        previous = -1
        for j, frame in enumerate(track.frames):
            fp = f"{tp}.frames[{j}]"
            if frame.frame <= previous:
                _fail(
                    f"{fp}.frame",
                    f"frame numbers must be strictly increasing: {frame.frame} after {previous}",
                )
            previous = frame.frame
            if frame_count and frame.frame >= frame_count:
                _fail(
                    f"{fp}.frame", f"frame {frame.frame} is past the end of the video ({frame_count} frames)"
                )
            if frame.shape.label and frame.shape.label != track.label:
                _fail(
                    f"{fp}.shape.label",
                    f"shape label {_show(frame.shape.label)} differs from"
                    f" the track's label {_show(track.label)}",
                )
            _check_shape(frame.shape, f"{fp}.shape", ctx, label=track.label)


def _check_shape(shape: annotation_pb2.Shape, path: str, ctx: _Context, *, label: str) -> None:
    cls = ctx.class_(label, f"{path}.label")
    kind = shape.WhichOneof("geometry")
    if kind is None:
        _fail(
            f"{path}.geometry",
            f"a shape needs a geometry (class {_show(cls.name)} allows: {_kinds_listing(cls.kinds)})",
        )
    gp = f"{path}.{kind}"
    if _KIND_OF[kind] not in cls.kinds:
        _fail(gp, f"class {_show(cls.name)} does not allow {kind} (allowed: {_kinds_listing(cls.kinds)})")
    _finite(shape.score, f"{path}.score")
    if not 0.0 <= shape.score <= 1.0:
        _fail(f"{path}.score", f"must be in [0, 1], got {_num(shape.score)}")

    if kind == "box":
        _check_box(shape.box, gp, ctx)
    elif kind == "rotated_box":
        _check_rotated_box(shape.rotated_box, gp, ctx)
    elif kind == "image_cuboid":
        _check_image_cuboid(shape.image_cuboid, gp, ctx)
    elif kind == "cuboid":
        _check_cuboid(shape.cuboid, gp, ctx)
    elif kind == "polygon":
        _check_polygon(shape.polygon, gp, ctx)
    elif kind == "multipolygon":
        if not shape.multipolygon.polygons:
            _fail(f"{gp}.polygons", "a multipolygon needs at least one polygon")
        for k, polygon in enumerate(shape.multipolygon.polygons):
            _check_polygon(polygon, f"{gp}.polygons[{k}]", ctx)
    elif kind == "polyline":
        points = shape.polyline.points
        if len(points) < 2:
            _fail(f"{gp}.points", f"a polyline needs at least 2 points, got {len(points)}")
        _check_points(points, f"{gp}.points", ctx, gp)
    elif kind == "keypoints":
        _check_keypoints(shape.keypoints.points, f"{gp}.points", ctx, ctx.skeleton_of(cls, gp))
    elif kind == "skeleton":
        if shape.skeleton.definition != cls.skeleton:
            _fail(
                f"{gp}.definition",
                f"skeleton definition {_show(shape.skeleton.definition)}"
                f" does not match class {_show(cls.name)}"
                f" (its skeleton is {_show(cls.skeleton)})",
            )
        _check_keypoints(shape.skeleton.points, f"{gp}.points", ctx, ctx.skeleton_of(cls, gp))
    elif kind == "instance_mask":
        _check_rle(shape.instance_mask.mask, f"{gp}.mask", ctx)
    elif kind == "bitmap":
        _check_bitmap(shape.bitmap, gp, ctx)
    elif kind == "point_labels":
        _check_point_labels(shape.point_labels, gp, ctx)
    elif kind == "text_span":
        _check_text_span(shape.text_span, gp, ctx)
    elif kind == "custom":
        _check_custom(shape.custom, gp, cls)
    # classification and text carry nothing to check

    _check_attributes(shape, cls, f"{path}.attributes")


def _check_attributes(shape: annotation_pb2.Shape, cls: model_pb2.LabelClass, path: str) -> None:
    defs = {d.name: d for d in cls.attributes}
    for name in sorted(shape.attributes):
        value = shape.attributes[name]
        ap = _key(path, name)
        d = defs.get(name)
        if d is None:
            known = _listing([x.name for x in cls.attributes])
            _fail(ap, f"unknown attribute {_show(name)} for class {_show(cls.name)} (known: {known})")
        kind = value.WhichOneof("kind")
        if d.type == M.ATTRIBUTE_TYPE_BOOL:
            if kind != "bool_value":
                _fail(ap, f"attribute {_show(name)} must be a bool, got {_describe(value)}")
        elif d.type == M.ATTRIBUTE_TYPE_NUMBER:
            if kind != "number_value":
                _fail(ap, f"attribute {_show(name)} must be a number, got {_describe(value)}")
            _finite(value.number_value, ap)
        elif d.type == M.ATTRIBUTE_TYPE_TEXT:
            if kind != "string_value":
                _fail(ap, f"attribute {_show(name)} must be a string, got {_describe(value)}")
        elif d.type == M.ATTRIBUTE_TYPE_ENUM:
            if kind != "string_value" or value.string_value not in d.options:
                _fail(
                    ap,
                    f"attribute {_show(name)} must be one of {_listing(list(d.options))},"
                    f" got {_describe(value)}",
                )
        else:
            _check_value_finite(value, ap)
    for d in cls.attributes:
        if d.required and d.name not in shape.attributes:
            _fail(_key(path, d.name), f"required attribute {_show(d.name)} is missing")


# ------------------------------------------------------------------ image-plane geometry


def _xy(points: Sequence[annotation_pb2.Point2]) -> tuple[FloatArray, FloatArray]:
    n = len(points)
    xs = np.fromiter((p.x for p in points), dtype=np.float64, count=n)
    ys = np.fromiter((p.y for p in points), dtype=np.float64, count=n)
    return xs, ys


def _check_coords(
    xs: FloatArray, ys: FloatArray, point_field: Callable[[int], str], ctx: _Context, frame_field: str
) -> None:
    """Finite everywhere first, then (if the media size is known) inside [0, width] x [0, height]."""
    bad_x = ~np.isfinite(xs)
    bad = bad_x | ~np.isfinite(ys)
    if bad.any():
        i = int(np.argmax(bad))
        coord, v = ("x", xs[i]) if bad_x[i] else ("y", ys[i])
        _fail(f"{point_field(i)}.{coord}", f"must be finite, got {_num(float(v))}")
    frame = ctx.frame(frame_field)
    if frame is None:
        return
    w, h = frame
    out_x = (xs < 0) | (xs > w)
    out = out_x | (ys < 0) | (ys > h)
    if out.any():
        i = int(np.argmax(out))
        x, y = float(xs[i]), float(ys[i])
        where = f"point ({_num(x)}, {_num(y)}) is outside the {ctx.noun} (width {_num(w)}, height {_num(h)})"
        if out_x[i]:
            _fail(f"{point_field(i)}.x", f"{where}: x must be in [0, {_num(w)}], got {_num(x)}")
        _fail(f"{point_field(i)}.y", f"{where}: y must be in [0, {_num(h)}], got {_num(y)}")


def _check_points(
    points: Sequence[annotation_pb2.Point2], path: str, ctx: _Context, frame_field: str
) -> None:
    xs, ys = _xy(points)
    _check_coords(xs, ys, lambda i: f"{path}[{i}]", ctx, frame_field)


def _check_box(box: annotation_pb2.BoundingBox, path: str, ctx: _Context) -> None:
    for name in ("x", "y", "width", "height"):
        _finite(getattr(box, name), f"{path}.{name}")
    _positive(box.width, f"{path}.width")
    _positive(box.height, f"{path}.height")
    frame = ctx.frame(path)
    if frame is None:
        return
    w, h = frame
    noun = ctx.noun
    if box.x < 0:
        _fail(f"{path}.x", f"box starts left of the {noun}: x must be >= 0, got {_num(box.x)}")
    if box.y < 0:
        _fail(f"{path}.y", f"box starts above the {noun}: y must be >= 0, got {_num(box.y)}")
    if box.x + box.width > w + _COMPUTED_SLACK:
        _fail(
            f"{path}.width",
            f"box extends past the right edge of the {noun}:"
            f" x + width = {_num(box.x + box.width)} > {_num(w)}",
        )
    if box.y + box.height > h + _COMPUTED_SLACK:
        _fail(
            f"{path}.height",
            f"box extends past the bottom edge of the {noun}:"
            f" y + height = {_num(box.y + box.height)} > {_num(h)}",
        )


def _check_rotated_box(box: annotation_pb2.RotatedBox, path: str, ctx: _Context) -> None:
    for name in ("cx", "cy", "width", "height", "angle"):
        _finite(getattr(box, name), f"{path}.{name}")
    _positive(box.width, f"{path}.width")
    _positive(box.height, f"{path}.height")
    frame = ctx.frame(path)
    if frame is None:
        return
    w, h = frame
    c, s = abs(math.cos(box.angle)), abs(math.sin(box.angle))
    # Half extents of the rotated rectangle; they do not depend on the rotation's direction.
    ex = 0.5 * (box.width * c + box.height * s)
    ey = 0.5 * (box.width * s + box.height * c)
    x0, x1, y0, y1 = box.cx - ex, box.cx + ex, box.cy - ey, box.cy + ey
    if x0 < -_COMPUTED_SLACK or x1 > w + _COMPUTED_SLACK or y0 < -_COMPUTED_SLACK or y1 > h + _COMPUTED_SLACK:
        _fail(
            path,
            f"a corner of the rotated box lies outside the {ctx.noun} (width {_num(w)}, height {_num(h)}):"
            " corners span"
            f" x [{x0:.6g}, {x1:.6g}], y [{y0:.6g}, {y1:.6g}]",
        )


def _check_image_cuboid(cuboid: annotation_pb2.ImageCuboid, path: str, ctx: _Context) -> None:
    for face in ("front", "back"):
        points = getattr(cuboid, face)
        if len(points) != 4:
            _fail(f"{path}.{face}", f"the {face} face needs exactly 4 points, got {len(points)}")
    _check_points(cuboid.front, f"{path}.front", ctx, path)
    _check_points(cuboid.back, f"{path}.back", ctx, path)


def _check_polygon(polygon: annotation_pb2.Polygon, path: str, ctx: _Context) -> None:
    ex, ey = _check_ring(polygon.exterior, f"{path}.exterior", ctx, frame_field=path)
    for k, hole in enumerate(polygon.holes):
        hp = f"{path}.holes[{k}]"
        hx, hy = _check_ring(hole, hp, ctx, frame_field=path)
        outside = _first_outside(hx, hy, ex, ey)
        if outside is not None:
            _fail(
                hp,
                f"hole vertex {outside} at ({_num(float(hx[outside]))}, {_num(float(hy[outside]))})"
                " is outside the exterior ring",
            )


def _check_ring(
    ring: annotation_pb2.Ring, path: str, ctx: _Context, *, frame_field: str
) -> tuple[FloatArray, FloatArray]:
    points = ring.points
    n = len(points)
    if n < 3:
        _fail(f"{path}.points", f"a polygon ring needs at least 3 points, got {n}")
    xs, ys = _xy(points)
    _check_coords(xs, ys, lambda i: f"{path}.points[{i}]", ctx, frame_field)
    problem = _ring_problem(xs, ys)
    if problem is not None:
        sub, message = problem
        _fail(path + sub, message)
    return xs, ys


# ------------------------------------------------------------------ masks, 3D, points, text, custom


def _check_size_matches(h: int, w: int, path: str, what: str, ctx: _Context) -> None:
    frame = ctx.frame(path)
    if frame is not None and (w, h) != (int(frame[0]), int(frame[1])):
        _fail(
            path, f"{what} is {h}x{w} but the {ctx.noun} is {int(frame[1])}x{int(frame[0])} (height x width)"
        )


def _check_rle(mask: annotation_pb2.RleMask, path: str, ctx: _Context) -> None:
    if mask.height <= 0:
        _fail(f"{path}.height", f"must be > 0, got {mask.height}")
    if mask.width <= 0:
        _fail(f"{path}.width", f"must be > 0, got {mask.width}")
    _check_size_matches(mask.height, mask.width, path, "mask", ctx)
    if not mask.counts:
        _fail(f"{path}.counts", "run lengths must not be empty")
    total = int(np.fromiter(mask.counts, dtype=np.uint64, count=len(mask.counts)).sum())
    expected = mask.height * mask.width
    if total != expected:
        _fail(
            f"{path}.counts",
            f"run lengths add up to {total}, expected {expected}"
            f" ({mask.height}x{mask.width}, height x width)",
        )


def _check_bitmap(bitmap: annotation_pb2.Bitmap, path: str, ctx: _Context) -> None:
    if bitmap.height <= 0:
        _fail(f"{path}.height", f"must be > 0, got {bitmap.height}")
    if bitmap.width <= 0:
        _fail(f"{path}.width", f"must be > 0, got {bitmap.width}")
    _check_size_matches(bitmap.height, bitmap.width, path, "bitmap", ctx)
    expected = -(-(bitmap.height * bitmap.width) // 8)
    if len(bitmap.data) != expected:
        _fail(
            f"{path}.data",
            f"a {bitmap.height}x{bitmap.width} bitmap needs {expected} bytes (1 bit per pixel),"
            f" got {len(bitmap.data)}",
        )


def _check_cuboid(cuboid: annotation_pb2.Cuboid, path: str, ctx: _Context) -> None:
    if ctx.media_type not in _CUBOID_MEDIA:
        _fail(path, f"cuboids need point-cloud, image or video media, got {_media_type_name(ctx.media_type)}")
    for axis in ("x", "y", "z"):
        _finite(getattr(cuboid.center, axis), f"{path}.center.{axis}")
    for axis in ("x", "y", "z"):
        _positive(getattr(cuboid.dimensions, axis), f"{path}.dimensions.{axis}")
    _finite(cuboid.yaw, f"{path}.yaw")
    q = cuboid.rotation
    for name in ("w", "x", "y", "z"):
        _finite(getattr(q, name), f"{path}.rotation.{name}")
    if q.w or q.x or q.y or q.z:
        norm = math.sqrt(q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z)
        if abs(norm - 1.0) > QUATERNION_TOLERANCE:
            _fail(f"{path}.rotation", f"rotation quaternion must have unit norm, got norm {norm:.9g}")


def _check_point_labels(labels: annotation_pb2.PointLabels, path: str, ctx: _Context) -> None:
    if ctx.media_type != M.MEDIA_TYPE_POINT_CLOUD:
        _fail(path, f"point labels need point-cloud media, got {_media_type_name(ctx.media_type)}")
    count = ctx.media.point_count
    if count <= 0:
        _fail(path, "the point cloud's point count is unknown (media.point_count is 0)")
    idx = np.fromiter(labels.indices, dtype=np.uint64, count=len(labels.indices))
    if idx.size == 0:
        return
    beyond = idx >= np.uint64(count)
    if beyond.any():
        i = int(np.argmax(beyond))
        _fail(
            f"{path}.indices[{i}]", f"index {int(idx[i])} is out of range: the point cloud has {count} points"
        )
    order = np.argsort(idx, kind="stable")
    ordered = idx[order]
    repeat = ordered[1:] == ordered[:-1]
    if repeat.any():
        # Stable sort: within a run of equal values the later positions follow the first one,
        # so the smallest repeating position is the first duplicate in input order.
        later = order[1:][repeat]
        j = int(later.min())
        first = int(np.flatnonzero(idx == idx[j])[0])
        _fail(f"{path}.indices[{j}]", f"duplicate index {int(idx[j])} (also indices[{first}])")


def _check_text_span(span: annotation_pb2.TextSpan, path: str, ctx: _Context) -> None:
    if ctx.media_type != M.MEDIA_TYPE_TEXT:
        _fail(path, f"text spans need text media, got {_media_type_name(ctx.media_type)}")
    if span.end <= span.start:
        _fail(f"{path}.end", f"end must be greater than start ({span.start}), got {span.end}")
    length = ctx.media.text_length
    if length > 0 and span.end > length:
        _fail(f"{path}.end", f"span end {span.end} is past the end of the text (length {length})")


@functools.lru_cache(maxsize=256)
def _custom_validator(schema_text: str) -> Draft202012Validator:
    doc = json.loads(schema_text)
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc)


def _json_path(base: str, parts: Iterable[str | int]) -> str:
    path = base
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else _key(path, part)
    return path


def _check_custom(custom: annotation_pb2.CustomValue, path: str, cls: model_pb2.LabelClass) -> None:
    vp = f"{path}.value"
    _check_struct_finite(custom.value, vp)
    if not cls.json_schema.strip():
        return
    try:
        validator = _custom_validator(cls.json_schema)
    except (ValueError, SchemaError) as exc:  # json.JSONDecodeError is a ValueError
        _fail(path, f"class {_show(cls.name)} has an invalid JSON schema: {exc}")
    instance: dict[str, Any] = json_format.MessageToDict(custom.value)
    try:
        error = best_match(validator.iter_errors(instance))
    except Unresolvable as exc:
        _fail(path, f"class {_show(cls.name)} has a JSON schema with an unresolvable reference: {exc}")
    if error is not None:
        message = error.message if len(error.message) <= 300 else error.message[:297] + "..."
        _fail(_json_path(vp, error.absolute_path), message)


# ------------------------------------------------------------------ keypoints


def _check_keypoints(
    points: Sequence[annotation_pb2.Keypoint], path: str, ctx: _Context, skel: model_pb2.SkeletonDefinition
) -> None:
    names = set(skel.keypoints)
    seen: dict[str, int] = {}
    frame: tuple[float, float] | None = None
    frame_checked = False
    for i, kp in enumerate(points):
        p = f"{path}[{i}]"
        if kp.name not in names:
            _fail(
                f"{p}.name",
                f"keypoint {_show(kp.name)} is not in skeleton {_show(skel.name)}"
                f" (keypoints: {_listing(list(skel.keypoints))})",
            )
        if kp.name in seen:
            _fail(f"{p}.name", f"duplicate keypoint {_show(kp.name)} (also points[{seen[kp.name]}])")
        seen[kp.name] = i
        _finite(kp.x, f"{p}.x")
        _finite(kp.y, f"{p}.y")
        if int(kp.visibility) not in _VISIBILITIES:
            _fail(f"{p}.visibility", f"unknown visibility {int(kp.visibility)}")
        if kp.visibility == A.VISIBILITY_NOT_LABELED:
            continue
        if not frame_checked:
            frame, frame_checked = ctx.frame(path.rsplit(".", 1)[0]), True
        if frame is None:
            continue
        w, h = frame
        where = (
            f"keypoint {_show(kp.name)} at ({_num(kp.x)}, {_num(kp.y)})"
            f" is outside the {ctx.noun} (width {_num(w)}, height {_num(h)})"
        )
        if not 0 <= kp.x <= w:
            _fail(f"{p}.x", f"{where}: x must be in [0, {_num(w)}]")
        if not 0 <= kp.y <= h:
            _fail(f"{p}.y", f"{where}: y must be in [0, {_num(h)}]")


# ------------------------------------------------------------------ exact planar predicates

_EPS: Final = 2.0**-53
_CCW_BOUND: Final = (3.0 + 16.0 * _EPS) * _EPS  # Shewchuk's orient2d error bound (ccwerrboundA)
_TINY: Final = 1e-290  # below this the products may have lost bits to underflow
_CHUNK: Final = 1 << 18  # candidate pairs per vectorised batch


def _on_grid(*arrays: FloatArray) -> bool:
    """True when every coordinate is a multiple of 1/256 below 2**17 in magnitude.

    Then every orientation determinant is computed exactly in float64 (scaled integers below
    2**25, differences below 2**26, products below 2**52), so no exact fallback is needed.
    Pixel coordinates from tools are nearly always like this.
    """
    for a in arrays:
        s = a * 256.0
        if not (bool(np.all(np.abs(s) < 2.0**25)) and bool(np.all(s == np.floor(s)))):
            return False
    return True


def _orient_exact(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> int:
    """Exact sign with integers: every finite float is an integer over a power of two."""
    ratios = [v.as_integer_ratio() for v in (ax, ay, bx, by, cx, cy)]
    den = max(d for _, d in ratios)
    a0, a1, b0, b1, c0, c1 = (num * (den // d) for num, d in ratios)
    det = (a0 - c0) * (b1 - c1) - (a1 - c1) * (b0 - c0)
    return (det > 0) - (det < 0)


def _orient_float(
    ax: FloatArray,
    ay: FloatArray,
    bx: FloatArray,
    by: FloatArray,
    cx: FloatArray,
    cy: FloatArray,
    exact: bool,
) -> tuple[SignArray, BoolArray]:
    """Float signs of (b - a) x (c - a), and where the float sign cannot be trusted."""
    with np.errstate(all="ignore"):
        left = (ax - cx) * (by - cy)
        right = (ay - cy) * (bx - cx)
        det = left - right
        sign: SignArray = (det > 0).astype(np.int8) - (det < 0).astype(np.int8)
        if exact:
            return sign, np.zeros(det.shape, dtype=np.bool_)
        mag = np.abs(left) + np.abs(right)
        unsure: BoolArray = ~(np.abs(det) > _CCW_BOUND * mag) | ~(mag >= _TINY)
    return sign, unsure


def _orient(
    ax: FloatArray,
    ay: FloatArray,
    bx: FloatArray,
    by: FloatArray,
    cx: FloatArray,
    cy: FloatArray,
    exact: bool,
) -> SignArray:
    """Sign of the cross product (b - a) x (c - a), elementwise and exact."""
    sign, unsure = _orient_float(ax, ay, bx, by, cx, cy, exact)
    for k in np.flatnonzero(unsure).tolist():
        sign[k] = _orient_exact(
            float(ax[k]), float(ay[k]), float(bx[k]), float(by[k]), float(cx[k]), float(cy[k])
        )
    return sign


def _all_collinear(xs: FloatArray, ys: FloatArray, exact: bool) -> bool:
    n = len(xs)
    far = int(np.argmax(np.abs(xs - xs[0]) + np.abs(ys - ys[0])))
    ax, ay = np.full(n, xs[0]), np.full(n, ys[0])
    bx, by = np.full(n, xs[far]), np.full(n, ys[far])
    sign, unsure = _orient_float(ax, ay, bx, by, xs, ys, exact)
    if bool(np.any((sign != 0) & ~unsure)):
        return False
    x0, y0, x1, y1 = float(xs[0]), float(ys[0]), float(xs[far]), float(ys[far])
    return all(
        _orient_exact(x0, y0, x1, y1, float(xs[k]), float(ys[k])) == 0
        for k in np.flatnonzero(unsure).tolist()
    )


def _ring_problem(xs: FloatArray, ys: FloatArray) -> tuple[str, str] | None:
    """The first reason a closed ring of finite points is not simple, as (field suffix, message)."""
    n = len(xs)
    exact = _on_grid(xs, ys)
    nx, ny = np.roll(xs, -1), np.roll(ys, -1)

    same = (xs == nx) & (ys == ny)
    if same.any():
        i = int(np.argmax(same))
        at = f"({_num(float(xs[i]))}, {_num(float(ys[i]))})"
        if i == n - 1:
            return (
                f".points[{n - 1}]",
                f"repeats the first point {at}; rings are closed implicitly, do not repeat the first point",
            )
        return f".points[{i + 1}]", f"repeats the previous point {at}"

    if _all_collinear(xs, ys, exact):
        return "", f"polygon ring has zero area: all {n} points are collinear"

    # Adjacent edges may only share their common vertex: a collinear turn back is an overlap.
    px, py = np.roll(xs, 1), np.roll(ys, 1)
    back = np.flatnonzero(
        (np.sign(xs - px) * np.sign(nx - xs) < 0) | (np.sign(ys - py) * np.sign(ny - ys) < 0)
    )
    if back.size:
        turn = _orient(px[back], py[back], xs[back], ys[back], nx[back], ny[back], exact)
        fold = back[turn == 0]
        if fold.size:
            i = int(fold[0])
            return "", (
                f"polygon ring self-intersects: edge {(i - 1) % n}-{i}"
                f" doubles back over edge {i}-{(i + 1) % n}"
            )

    hit = _first_crossing(xs, ys, nx, ny, exact)
    if isinstance(hit, int):
        return "", (
            f"polygon ring is too complex to check: {hit} pairs of its {n} edges overlap in extent"
            f" (limit {MAX_CANDIDATE_PAIRS}); split or simplify it"
        )
    if hit is not None:
        a, b, proper = hit
        verb = "crosses" if proper else "touches"
        return "", f"polygon ring self-intersects: edge {a}-{(a + 1) % n} {verb} edge {b}-{(b + 1) % n}"
    return None


def _first_crossing(
    xs: FloatArray, ys: FloatArray, nx: FloatArray, ny: FloatArray, exact: bool
) -> tuple[int, int, bool] | int | None:
    """A pair of non-adjacent edges (a < b) that meet, if any: the first in the first batch that has one.

    Edge k joins vertex k to vertex k+1 (mod n). Two segments can only meet if their projections
    onto any direction overlap, so candidates come from a sweep over the edges' projections onto
    whichever of eight directions (x, y, diagonals and between) yields the fewest overlapping pairs;
    they are generated and tested in bounded vectorised batches, exactly. Returns the number of
    candidate pairs instead when it exceeds MAX_CANDIDATE_PAIRS (only contrived rings, such as
    thousands of long spikes all converging on one spot, get there).
    """
    n = len(xs)
    if n < 4:
        return None
    x_lo, x_hi = np.minimum(xs, nx), np.maximum(xs, nx)
    y_lo, y_hi = np.minimum(ys, ny), np.maximum(ys, ny)
    best: tuple[int, IntArray, IntArray] | None = None
    for lo, hi in _projections(xs, ys, nx, ny, x_lo, x_hi, y_lo, y_hi):
        order, counts = _sweep(lo, hi)
        total = int(counts.sum())
        if best is None or total < best[0]:
            best = (total, order, counts)
        if total <= 4 * n:
            break
    assert best is not None
    total, order, counts = best
    if total > MAX_CANDIDATE_PAIRS:
        return total
    for i, j in _sweep_pairs(order, counts):
        a, b = np.minimum(i, j), np.maximum(i, j)
        keep = (
            (x_lo[a] <= x_hi[b])
            & (x_lo[b] <= x_hi[a])
            & (y_lo[a] <= y_hi[b])
            & (y_lo[b] <= y_hi[a])
            & (b - a != 1)
            & ~((a == 0) & (b == n - 1))
        )
        a, b = a[keep], b[keep]
        if a.size == 0:
            continue
        o1 = _orient(xs[a], ys[a], nx[a], ny[a], xs[b], ys[b], exact)
        o2 = _orient(xs[a], ys[a], nx[a], ny[a], nx[b], ny[b], exact)
        o12 = o1 * o2
        straddle = o12 <= 0
        a, b, o12 = a[straddle], b[straddle], o12[straddle]
        if a.size == 0:
            continue
        o3 = _orient(xs[b], ys[b], nx[b], ny[b], xs[a], ys[a], exact)
        o4 = _orient(xs[b], ys[b], nx[b], ny[b], nx[a], ny[a], exact)
        o34 = o3 * o4
        # Segments whose bounding boxes overlap meet iff each one straddles (or touches) the other's line.
        hits = np.flatnonzero(o34 <= 0)
        if hits.size:
            keys = a[hits] * n + b[hits]
            h = int(hits[int(np.argmin(keys))])
            return int(a[h]), int(b[h]), bool(o12[h] < 0 and o34[h] < 0)
    return None


def _projections(
    xs: FloatArray,
    ys: FloatArray,
    nx: FloatArray,
    ny: FloatArray,
    x_lo: FloatArray,
    x_hi: FloatArray,
    y_lo: FloatArray,
    y_hi: FloatArray,
) -> Iterator[tuple[FloatArray, FloatArray]]:
    """Each edge's extent along x, y, then six more directions (multiples of 22.5 degrees).

    Projections onto the slanted directions round, so their intervals are widened by more than
    the rounding error: the filter may keep extra pairs, never drop one.
    """
    yield x_lo, x_hi
    yield y_lo, y_hi
    with np.errstate(all="ignore"):
        slack = 8 * _EPS * float(np.max(np.abs(xs) + np.abs(ys)))
        for k in (2, 6, 1, 3, 5, 7):
            c, s = math.cos(k * math.pi / 8), math.sin(k * math.pi / 8)
            p, q = xs * c + ys * s, nx * c + ny * s
            yield np.minimum(p, q) - slack, np.maximum(p, q) + slack


def _sweep(lo: FloatArray, hi: FloatArray) -> tuple[IntArray, IntArray]:
    """Sort intervals by `lo`; counts[k] = how many later intervals start before sorted interval k ends."""
    n = len(lo)
    order = np.argsort(lo, kind="stable").astype(np.int64)
    end = np.searchsorted(lo[order], hi[order], side="right").astype(np.int64)
    counts = np.maximum(end - np.arange(1, n + 1, dtype=np.int64), 0)
    return order, counts


def _sweep_pairs(order: IntArray, counts: IntArray) -> Iterator[tuple[IntArray, IntArray]]:
    """Every pair of intervals that overlap along the sweep axis, in batches of about _CHUNK."""
    n = len(order)
    cum = np.cumsum(counts)
    r0, done = 0, 0
    while r0 < n:
        r1 = min(max(int(np.searchsorted(cum, done + _CHUNK, side="right")), r0 + 1), n)
        cnt = counts[r0:r1]
        m = int(cnt.sum())
        if m:
            rows = np.repeat(np.arange(r0, r1, dtype=np.int64), cnt)
            starts = np.cumsum(cnt) - cnt
            cols = rows + 1 + (np.arange(m, dtype=np.int64) - np.repeat(starts, cnt))
            yield order[rows], order[cols]
        done = int(cum[r1 - 1])
        r0 = r1


def _first_outside(qx: FloatArray, qy: FloatArray, xs: FloatArray, ys: FloatArray) -> int | None:
    """Index of the first query point strictly outside the ring (boundary counts as inside)."""
    n = len(xs)
    exact = _on_grid(qx, qy, xs, ys)
    nx, ny = np.roll(xs, -1), np.roll(ys, -1)
    x_lo, x_hi = np.minimum(xs, nx), np.maximum(xs, nx)
    y_lo, y_hi = np.minimum(ys, ny), np.maximum(ys, ny)
    step = max(1, _CHUNK // n)
    for q0 in range(0, len(qx), step):
        px, py = qx[q0 : q0 + step], qy[q0 : q0 + step]
        m = len(px)
        qi, ei = np.nonzero((y_lo[None, :] <= py[:, None]) & (py[:, None] <= y_hi[None, :]))
        pxq, pyq = px[qi], py[qi]
        o = _orient(xs[ei], ys[ei], nx[ei], ny[ei], pxq, pyq, exact)
        on_edge = (o == 0) & (x_lo[ei] <= pxq) & (pxq <= x_hi[ei])
        up = (ys[ei] <= pyq) & (pyq < ny[ei]) & (o > 0)
        down = (ny[ei] <= pyq) & (pyq < ys[ei]) & (o < 0)
        winding = np.bincount(qi, weights=up.astype(np.float64) - down.astype(np.float64), minlength=m)
        boundary = np.bincount(qi, weights=on_edge.astype(np.float64), minlength=m) > 0
        inside = boundary | (winding != 0)
        if not inside.all():
            return q0 + int(np.argmin(inside))
    return None


# ------------------------------------------------------------------ task spec


def validate_task_spec(
    spec: model_pb2.TaskSpec, *, schema: model_pb2.LabelSchema | None, field: str = "task"
) -> None:
    if spec.task_id:
        validate_id(spec.task_id, field=f"{field}.task_id")
    if not spec.data_uri:
        _fail(f"{field}.data_uri", "required")
    if len(spec.data_uri) > MAX_DATA_URI:
        _fail(f"{field}.data_uri", f"must be at most {MAX_DATA_URI} characters, got {len(spec.data_uri)}")
    media_type = int(spec.media_type)
    if media_type not in _MEDIA_TYPES:
        _fail(f"{field}.media_type", f"must be a known media type, got {_media_type_name(media_type)}")
    media, mp = spec.media, f"{field}.media"
    if media_type in _FRAMED_MEDIA:
        if media.width <= 0:
            _fail(
                f"{mp}.width",
                f"{_media_type_name(media_type)} needs the frame width (> 0), got {media.width}",
            )
        if media.height <= 0:
            _fail(
                f"{mp}.height",
                f"{_media_type_name(media_type)} needs the frame height (> 0), got {media.height}",
            )
    if media_type == M.MEDIA_TYPE_VIDEO and media.frame_count <= 0:
        _fail(f"{mp}.frame_count", f"video needs the frame count (> 0), got {media.frame_count}")
    if media_type == M.MEDIA_TYPE_POINT_CLOUD and media.point_count <= 0:
        _fail(f"{mp}.point_count", f"a point cloud needs the point count (> 0), got {media.point_count}")
    if media_type == M.MEDIA_TYPE_TEXT and media.text_length <= 0:
        _fail(f"{mp}.text_length", f"text needs its length (> 0), got {media.text_length}")
    if spec.overlap > MAX_OVERLAP:
        _fail(f"{field}.overlap", f"must be at most {MAX_OVERLAP}, got {spec.overlap}")
    if spec.expected_seconds > MAX_EXPECTED_SECONDS:
        _fail(
            f"{field}.expected_seconds",
            f"must be at most {MAX_EXPECTED_SECONDS} (a day), got {spec.expected_seconds}",
        )
    lo, hi = PRIORITY_RANGE
    if not lo <= spec.priority <= hi:
        _fail(f"{field}.priority", f"must be in [{lo}, {hi}], got {spec.priority}")
    skills: dict[str, int] = {}
    for i, skill in enumerate(spec.required_skills):
        if not skill.strip():
            _fail(f"{field}.required_skills[{i}]", "skill names must be non-empty")
        if skill in skills:
            _fail(
                f"{field}.required_skills[{i}]",
                f"duplicate skill {_show(skill)} (also required_skills[{skills[skill]}])",
            )
        skills[skill] = i
    size = 0
    for key in sorted(spec.metadata):
        if not key:
            _fail(f"{field}.metadata", "metadata keys must be non-empty")
        size += len(key.encode()) + len(spec.metadata[key].encode())
    if size > MAX_METADATA_BYTES:
        _fail(f"{field}.metadata", f"metadata must total at most {MAX_METADATA_BYTES} bytes, got {size}")
    if spec.HasField("deadline"):
        if spec.deadline.seconds <= 0:
            _fail(
                f"{field}.deadline",
                f"must be after 1970-01-01T00:00:00Z, got seconds={spec.deadline.seconds}",
            )
        if spec.deadline.seconds > _MAX_TIMESTAMP_SECONDS:
            _fail(f"{field}.deadline", f"must be before year 10000, got seconds={spec.deadline.seconds}")
        if not 0 <= spec.deadline.nanos < 1_000_000_000:
            _fail(f"{field}.deadline.nanos", f"must be in [0, 999999999], got {spec.deadline.nanos}")
    if spec.HasField("prelabel"):
        pp = f"{field}.prelabel"
        if spec.prelabel.source != A.ANNOTATION_SOURCE_MODEL:
            _fail(
                f"{pp}.source", "a task's pre-label must come from a model (source ANNOTATION_SOURCE_MODEL)"
            )
        if schema is not None:
            validate_annotation(
                spec.prelabel, schema=schema, media_type=spec.media_type, media=media, field=pp
            )
