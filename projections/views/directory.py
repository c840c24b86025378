"""Directory view: projects, memberships, people and bearer tokens.

Collections
- "project"         pk=project_id, sk="" → {project_id, name, description, settings,
                                           schema_version, guideline_version, created_offset}
- "projects"        pk="all", sk=project_id → {project_id}
- "project_members" pk=project_id, sk=person_id → {person_id}
- "person_projects" pk=person_id, sk=project_id → {project_id}
- "person"          pk=person_id, sk="" → {person_id, display_name, roles, skills [{name, level}], time_zone}
                    (skills as the person aggregate holds them: the registered or updated ones
                    plus those granted by qualifications, `SkillGranted`)
- "token"           pk=token_sha256, sk="" → {person_id, token_id, expires_ms, revoked}
- "person_tokens"   pk=person_id, sk=token_id → {token_sha256}
"""

from __future__ import annotations

from google.protobuf import json_format

from coordinator._pb.labelweave.events.v1 import model_pb2
from coordinator.eventlog.base import RecordedEvent
from projections.base import Doc, ViewTx
from projections.views.taskstate import payload_kind, ts_ms


def person_doc(spec: model_pb2.PersonSpec) -> Doc:
    return {
        "person_id": spec.person_id,
        "display_name": spec.display_name,
        "roles": [int(r) for r in spec.roles],
        "skills": [{"name": s.name, "level": int(s.level)} for s in spec.skills],
        "time_zone": spec.time_zone,
    }


class DirectoryView:
    name: str = "directory"
    collections: tuple[str, ...] = (
        "project",
        "projects",
        "project_members",
        "person_projects",
        "person",
        "token",
        "person_tokens",
    )

    def apply(self, event: RecordedEvent, tx: ViewTx) -> None:
        env = event.envelope
        kind = payload_kind(event)
        if kind == "project_created":
            pc = env.project_created
            tx.put(
                "project",
                pc.project_id,
                "",
                {
                    "project_id": pc.project_id,
                    "name": pc.name,
                    "description": pc.description,
                    "settings": json_format.MessageToDict(pc.settings, preserving_proto_field_name=True),
                    "schema_version": 0,
                    "guideline_version": 0,
                    "created_offset": event.position.offset,
                },
            )
            tx.put("projects", "all", pc.project_id, {"project_id": pc.project_id})
        elif kind == "project_settings_changed":
            ps = env.project_settings_changed
            self._update_project(
                tx,
                ps.project_id,
                settings=json_format.MessageToDict(ps.settings, preserving_proto_field_name=True),
            )
        elif kind == "label_schema_published":
            ls = env.label_schema_published
            self._update_project(tx, ls.project_id, schema_version=int(ls.schema.version))
        elif kind == "guideline_published":
            gp = env.guideline_published
            self._update_project(tx, gp.project_id, guideline_version=int(gp.guideline.version))
        elif kind == "project_member_added":
            ma = env.project_member_added
            tx.put("project_members", ma.project_id, ma.person_id, {"person_id": ma.person_id})
            tx.put("person_projects", ma.person_id, ma.project_id, {"project_id": ma.project_id})
        elif kind == "project_member_removed":
            mr = env.project_member_removed
            tx.delete("project_members", mr.project_id, mr.person_id)
            tx.delete("person_projects", mr.person_id, mr.project_id)
        elif kind == "person_registered" or kind == "person_updated":
            spec = getattr(env, kind).person
            tx.put("person", spec.person_id, "", person_doc(spec))
        elif kind == "skill_granted":  # a passed qualification (the person aggregate's rule)
            sg = env.skill_granted
            doc = tx.get("person", sg.person_id)
            if doc is None:
                return
            skills: list[Doc] = doc["skills"]
            for skill in skills:
                if skill["name"] == sg.skill.name:
                    skill["level"] = max(int(skill["level"]), int(sg.skill.level))
                    break
            else:
                skills.append({"name": sg.skill.name, "level": int(sg.skill.level)})
            tx.put("person", sg.person_id, "", doc)
        elif kind == "token_issued":
            ti = env.token_issued
            tx.put(
                "token",
                ti.token_sha256,
                "",
                {
                    "person_id": ti.person_id,
                    "token_id": ti.token_id,
                    "expires_ms": ts_ms(ti.expires_at) if ti.HasField("expires_at") else None,
                    "revoked": False,
                },
            )
            tx.put("person_tokens", ti.person_id, ti.token_id, {"token_sha256": ti.token_sha256})
        elif kind == "token_revoked":
            tr = env.token_revoked
            ref = tx.get("person_tokens", tr.person_id, tr.token_id)
            if ref is None:
                return
            tok = tx.get("token", ref["token_sha256"])
            if tok is not None and not tok["revoked"]:
                tok["revoked"] = True
                tx.put("token", ref["token_sha256"], "", tok)

    @staticmethod
    def _update_project(tx: ViewTx, project_id: str, **fields: object) -> None:
        doc = tx.get("project", project_id)
        if doc is None:
            return
        doc.update(fields)
        tx.put("project", project_id, "", doc)
