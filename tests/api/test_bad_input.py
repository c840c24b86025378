"""Bad input of every geometry kind: INVALID_ARGUMENT naming the field, and nothing appended."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from coordinator._pb.labelweave.api.v1 import api_pb2
from coordinator._pb.labelweave.events.v1 import annotation_pb2 as A
from coordinator._pb.labelweave.events.v1 import model_pb2

from .conftest import Env, Stubs, image_task, trailers


def _shape(label: str, **geometry: Any) -> A.Shape:
    return A.Shape(label=label, **geometry)


def _box(x: float = 10, y: float = 10, w: float = 50, h: float = 40) -> A.BoundingBox:
    return A.BoundingBox(x=x, y=y, width=w, height=h)


def _ring(*pts: tuple[float, float]) -> A.Ring:
    return A.Ring(points=[A.Point2(x=x, y=y) for x, y in pts])


def _custom(value: dict[str, str | float | bool | None]) -> A.CustomValue:
    s = struct_pb2.Struct()
    s.update(value)
    return A.CustomValue(value=s)


BAD: list[tuple[str, A.Annotation, str]] = [
    ("nan box", A.Annotation(shapes=[_shape("car", box=_box(w=math.nan))]), "annotation.shapes[0].box.width"),
    ("inf box", A.Annotation(shapes=[_shape("car", box=_box(x=math.inf))]), "annotation.shapes[0].box.x"),
    (
        "box out of frame",
        A.Annotation(shapes=[_shape("car", box=_box(x=600, w=100))]),
        "annotation.shapes[0].box",
    ),
    ("unknown class", A.Annotation(shapes=[_shape("dgo", box=_box())]), "annotation.shapes[0].label"),
    ("kind not allowed", A.Annotation(shapes=[_shape("lane", box=_box())]), "annotation.shapes[0]"),
    (
        "self-intersecting polygon",
        A.Annotation(
            shapes=[_shape("car", polygon=A.Polygon(exterior=_ring((0, 0), (100, 100), (100, 0), (0, 100))))]
        ),
        "annotation.shapes[0].polygon",
    ),
    (
        "polygon point out of frame",
        A.Annotation(shapes=[_shape("car", polygon=A.Polygon(exterior=_ring((0, 0), (700, 0), (0, 100))))]),
        "annotation.shapes[0].polygon.exterior.points[1]",
    ),
    (
        "mask of the wrong size",
        A.Annotation(
            shapes=[
                _shape("car", instance_mask=A.InstanceMask(mask=A.RleMask(height=10, width=12, counts=[120])))
            ]
        ),
        "annotation.shapes[0].instance_mask.mask",
    ),
    (
        "keypoint outside the skeleton",
        A.Annotation(
            shapes=[
                _shape(
                    "person",
                    keypoints=A.Keypoints(
                        points=[A.Keypoint(name="tail", x=5, y=5, visibility=A.VISIBILITY_VISIBLE)]
                    ),
                )
            ]
        ),
        "annotation.shapes[0].keypoints.points[0].name",
    ),
    (
        "keypoint out of frame",
        A.Annotation(
            shapes=[
                _shape(
                    "person",
                    keypoints=A.Keypoints(
                        points=[A.Keypoint(name="nose", x=5, y=900, visibility=A.VISIBILITY_VISIBLE)]
                    ),
                )
            ]
        ),
        "annotation.shapes[0].keypoints.points[0]",
    ),
    (
        "bitmap of the wrong length",
        A.Annotation(shapes=[_shape("damage", bitmap=A.Bitmap(height=480, width=640, data=b"\x00" * 10))]),
        "annotation.shapes[0].bitmap",
    ),
    (
        "polyline with one point",
        A.Annotation(shapes=[_shape("lane", polyline=A.Polyline(points=[A.Point2(x=1, y=1)]))]),
        "annotation.shapes[0].polyline",
    ),
    (
        "custom payload against its JSON schema",
        A.Annotation(shapes=[_shape("widget", custom=_custom({"size": -3}))]),
        "annotation.shapes[0].custom.value",
    ),
    (
        "track on an image",
        A.Annotation(
            tracks=[
                A.Track(
                    track_id="t1",
                    label="car",
                    frames=[A.TrackFrame(frame=0, shape=_shape("car", box=_box()))],
                )
            ]
        ),
        "annotation.tracks",
    ),
    (
        "point labels on an image",
        A.Annotation(shapes=[_shape("ground", point_labels=A.PointLabels(indices=[1, 2]))]),
        "annotation.shapes[0]",
    ),
    (
        "enum attribute outside its options",
        A.Annotation(
            shapes=[
                A.Shape(
                    label="car", box=_box(), attributes={"colour": struct_pb2.Value(string_value="plaid")}
                )
            ]
        ),
        "annotation.shapes[0].attributes",
    ),
    (
        "score above one",
        A.Annotation(shapes=[A.Shape(label="car", box=_box(), score=1.5)]),
        "annotation.shapes[0].score",
    ),
]


@pytest.fixture
def leased(env: Env) -> tuple[Env, Stubs, str, str]:
    ann = env.person("ann", model_pb2.ROLE_ANNOTATOR)
    env.project("p1", members=("ann",))
    env.admin.tasks.ImportTasks(
        api_pb2.ImportTasksRequest(command_id="imp", project_id="p1", tasks=[image_task("t1")]),
        metadata=env.admin.md,
    )
    env.server.app.runner.catch_up()
    nxt = ann.tasks.NextTask(api_pb2.NextTaskRequest(command_id="n1", project_id="p1"), metadata=ann.md)
    assert nxt.task.task_id == "t1"
    return env, ann, nxt.task.task_id, nxt.lease.lease_id


@pytest.mark.parametrize(("case", "annotation", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_geometry_is_invalid_argument_naming_the_field_and_appends_nothing(
    leased: tuple[Env, Stubs, str, str], case: str, annotation: A.Annotation, field: str
) -> None:
    env, ann, task_id, lease_id = leased
    head = env.server.app.log.head()
    with pytest.raises(grpc.RpcError) as err:
        ann.tasks.Submit(
            api_pb2.SubmitRequest(
                command_id=f"bad-{case}", task_id=task_id, lease_id=lease_id, annotation=annotation
            ),
            metadata=ann.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    trailing = trailers(err.value)
    assert trailing.get("labelweave-field", "").startswith(field), (trailing, err.value.details())
    details = err.value.details()
    assert details is not None
    assert field.split(".")[0] in details
    assert env.server.app.log.head() == head


def test_bad_task_in_an_import_batch_names_its_index_and_imports_nothing(env: Env) -> None:
    env.project("p1")
    head = env.server.app.log.head()
    bad = image_task("t2")
    bad.media.width = 0
    with pytest.raises(grpc.RpcError) as err:
        env.admin.tasks.ImportTasks(
            api_pb2.ImportTasksRequest(command_id="imp", project_id="p1", tasks=[image_task("t1"), bad]),
            metadata=env.admin.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err.value)["labelweave-field"].startswith("tasks[1].media")
    assert env.server.app.log.head() == head


def test_invalid_label_schema_is_refused_with_its_field(env: Env) -> None:
    env.admin.admin.CreateProject(
        api_pb2.CreateProjectRequest(command_id="c", project_id="p9", name="P9"), metadata=env.admin.md
    )
    head = env.server.app.log.head()
    schema = model_pb2.LabelSchema(
        classes=[
            model_pb2.LabelClass(name="a", kinds=[model_pb2.ANNOTATION_KIND_BOX]),
            model_pb2.LabelClass(name="a", kinds=[model_pb2.ANNOTATION_KIND_BOX]),
        ]
    )
    with pytest.raises(grpc.RpcError) as err:
        env.admin.admin.PublishLabelSchema(
            api_pb2.PublishLabelSchemaRequest(command_id="s", project_id="p9", schema=schema),
            metadata=env.admin.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err.value)["labelweave-field"].startswith("schema.classes[1]")
    assert env.server.app.log.head() == head


def test_bad_person_time_zone_is_refused(env: Env) -> None:
    head = env.server.app.log.head()
    with pytest.raises(grpc.RpcError) as err:
        env.admin.admin.RegisterPerson(
            api_pb2.RegisterPersonRequest(
                command_id="r",
                person=model_pb2.PersonSpec(
                    person_id="x", roles=[model_pb2.ROLE_ANNOTATOR], time_zone="Mars/Olympus"
                ),
            ),
            metadata=env.admin.md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailers(err.value)["labelweave-field"] == "person.time_zone"
    assert env.server.app.log.head() == head
