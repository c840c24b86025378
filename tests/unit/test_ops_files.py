"""The operations files (compose, Prometheus, alerts, Grafana) agree with each other and with the code.

No Docker engine or promtool is needed: the files are parsed and cross-checked, every metric they query
must be one that `coordinator.metrics.Metrics` registers, and the container health check is run
against a real server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from coordinator.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
DATASOURCES = ROOT / "ops" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "ops" / "grafana" / "provisioning" / "dashboards" / "labelweave.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "labelweave.json"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

DOCUMENTED_SERVICES = {"coordinator", "kafka", "cassandra", "migrate", "workers", "prometheus", "grafana"}
DISTRIBUTED_ONLY = {"kafka", "cassandra", "migrate", "workers"}
CLIENT_ERROR_CODES = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "FAILED_PRECONDITION",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "ALREADY_EXISTS",
}
METRIC_RE = re.compile(r"labelweave_[a-z_]+")
DURATION_RE = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def _yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = _yaml(COMPOSE)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc = compose["services"]
    assert isinstance(svc, dict)
    return svc


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    doc = _yaml(ALERTS)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _exposed_sample_names() -> set[str]:
    """Every sample name a scrape can return, as prometheus_client names them."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in _families():
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def _families() -> list[Any]:
    """The coordinator's metric families and the projection workers'."""
    from consumers.app import WorkerMetrics

    return [
        *Metrics(CollectorRegistry()).registry.collect(),
        *WorkerMetrics(CollectorRegistry()).registry.collect(),
    ]


def _family_names() -> set[str]:
    return {family.name for family in _families()}


def _container_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for entry in service.get("ports", []):
        text = str(entry["target"] if isinstance(entry, dict) else entry)
        ports.add(int(text.rsplit(":", 1)[-1].split("/")[0]))
    ports.update(int(str(p).split("/")[0]) for p in service.get("expose", []))
    return ports


def _dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in _dashboard_panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return queries


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def _doc_anchors() -> set[str]:
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    return {_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, flags=re.MULTILINE)}


def _balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    in_string = False
    for ch in expr:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack and not in_string


# ---- docker-compose.yml ------------------------------------------------------------------------------


def test_every_documented_service_exists(services: dict[str, Any]) -> None:
    assert set(services) >= DOCUMENTED_SERVICES


def test_every_service_has_an_image_or_build_and_a_health_check(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        if name == "migrate":
            # a one-shot job: others wait for it to complete, and it waits for Cassandra
            assert svc["restart"] == "no"
            assert svc["depends_on"] == {"cassandra": {"condition": "service_healthy"}}
        else:
            assert svc["healthcheck"]["test"], name
    for name in ("coordinator", "workers"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_images_are_pinned_to_exact_tags(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if "image" not in svc:
            continue
        image = svc["image"]
        assert "@" not in image, f"{name}: pin by tag, not digest"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not an exact tag"
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1))


def test_plain_up_runs_the_embedded_stack_and_the_profile_adds_the_real_services(
    services: dict[str, Any],
) -> None:
    for name, svc in services.items():
        profiles = svc.get("profiles", [])
        assert profiles == (["distributed"] if name in DISTRIBUTED_ONLY else []), name
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if not profiles and services[dep].get("profiles"):
                # otherwise `docker compose up` without the profile refuses to start
                assert isinstance(spec, dict) and spec.get("required") is False, f"{name} -> {dep}"


def test_coordinator_listens_and_exports_metrics_on_all_interfaces(services: dict[str, Any]) -> None:
    coordinator = services["coordinator"]
    args = [str(a) for a in coordinator["command"]]
    assert args[0] == "serve"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--listen"] == "0.0.0.0:50051"
    assert flags["--metrics-host"] == "0.0.0.0"
    assert flags["--data-dir"] == "/data"
    assert {50051, int(flags["--metrics-port"])} <= _container_ports(coordinator)
    assert any(str(v).endswith(":/data") for v in coordinator["volumes"])
    workers = [str(a) for a in services["workers"]["command"]]
    assert workers[:5] == [
        "workers",
        "--event-log",
        "kafka://kafka:9092",
        "--store",
        "cassandra://cassandra:9042/labelweave",
    ]
    wflags = dict(zip(workers[5::2], workers[6::2], strict=True))
    assert wflags == {"--metrics-host": "0.0.0.0", "--metrics-port": "9465"}
    assert [str(a) for a in services["migrate"]["command"]] == [
        "migrate",
        "--store",
        "cassandra://cassandra:9042/labelweave",
    ]
    # the commands the compose file runs exist in the CLI with these flags
    from coordinator.cli import build_parser

    parser = build_parser()
    parser.parse_args(workers)
    parser.parse_args([str(a) for a in services["migrate"]["command"]])
    parser.parse_args(args)


def test_container_health_check_is_the_same_in_compose_and_dockerfile(services: dict[str, Any]) -> None:
    test = services["coordinator"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert json.dumps(test[3]) in DOCKERFILE.read_text(encoding="utf-8")


def test_container_health_check_reports_a_running_server_and_fails_once_it_stops(
    services: dict[str, Any], tmp_path: Path
) -> None:
    from coordinator.server import start
    from coordinator.settings import Settings

    code = services["coordinator"]["healthcheck"]["test"][3]
    assert "127.0.0.1:50051" in code
    running = start(Settings(data_dir=tmp_path, listen="127.0.0.1:0", metrics_port=0))
    try:
        probe = code.replace("127.0.0.1:50051", f"127.0.0.1:{running.port}")
        ok = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr.decode()
    finally:
        running.stop(0)
    down = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30)
    assert down.returncode != 0


# ---- Prometheus ----------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_coordinator_every_five_seconds(services: dict[str, Any]) -> None:
    config = _yaml(PROMETHEUS)
    jobs = config["scrape_configs"]
    assert jobs
    targets: list[str] = []
    for job in jobs:
        for static in job.get("static_configs", []):
            targets.extend(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets.extend(f"{name}:{dns['port']}" for name in dns["names"])
    assert targets
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host in services, target
        assert int(port) in _container_ports(services[host]), target
    coordinator_jobs = [
        j
        for j in jobs
        if any(t.startswith("coordinator:") for s in j.get("static_configs", []) for t in s["targets"])
    ]
    assert [j["scrape_interval"] for j in coordinator_jobs] == ["5s"]


def test_prometheus_loads_the_alert_rules_from_the_mounted_directory(services: dict[str, Any]) -> None:
    config = _yaml(PROMETHEUS)
    assert config["rule_files"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).is_file(), rule_file
    mounts = [str(v) for v in services["prometheus"]["volumes"]]
    assert "./ops/prometheus:/etc/prometheus:ro" in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_alert_rules_are_well_formed(alert_rules: list[dict[str, Any]]) -> None:
    doc = _yaml(ALERTS)
    assert set(doc) == {"groups"}
    group_names = [g["name"] for g in doc["groups"]]
    assert len(group_names) == len(set(group_names))
    names = [r["alert"] for r in alert_rules]
    anchors = _doc_anchors()
    assert names
    for rule in alert_rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule[
            "alert"
        ]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and _balanced(rule["expr"]), rule["alert"]
        assert DURATION_RE.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}"), rule["alert"]
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/operations.md#")
        assert runbook.split("#", 1)[1] in anchors, f"{rule['alert']}: no section {runbook} in docs"


def test_alerts_cover_lag_errors_latency_and_stuck_queues(alert_rules: list[dict[str, Any]]) -> None:
    exprs = [r["expr"] for r in alert_rules]
    assert any("labelweave_projection_lag_events" in e for e in exprs)
    latency = [e for e in exprs if "labelweave_rpc_latency_seconds_bucket" in e]
    assert latency and all("histogram_quantile(0.99" in e and "NextTask|Submit" in e for e in latency)
    assert any("labelweave_queue_depth_tasks" in e and 'method="Submit"' in e for e in exprs)
    error_ratio = [e for e in exprs if "labelweave_rpc_total{code!~" in e]
    assert error_ratio
    for expr in error_ratio:
        match = re.search(r'code!~"([^"]+)"', expr)
        assert match is not None
        assert set(match.group(1).split("|")) == CLIENT_ERROR_CODES | {"OK"}
    # nobody subscribed to label streams is a normal state
    assert not any("labelweave_label_subscribers" in e for e in exprs)


# ---- Grafana ---------------------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_prometheus_and_the_mounted_dashboards(
    services: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    datasources = _yaml(DATASOURCES)["datasources"]
    assert len(datasources) == 1
    ds = datasources[0]
    assert ds["type"] == "prometheus"
    host_port = ds["url"].removeprefix("http://")
    host, _, port = host_port.partition(":")
    assert host in services and int(port) in _container_ports(services[host])

    provider = _yaml(DASHBOARD_PROVIDERS)["providers"][0]
    grafana = services["grafana"]
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in grafana["volumes"]}
    assert mounts["./ops/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "/api/health" in " ".join(grafana["healthcheck"]["test"])


def test_dashboard_panels_have_a_data_source_and_queries(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "labelweave-overview"
    ds_uid = _yaml(DATASOURCES)["datasources"][0]["uid"]
    panels = [p for p in _dashboard_panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 12
    ids = [p["id"] for p in _dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": ds_uid}, panel["title"]
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and _balanced(target["expr"]), panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in (
        "rpc rate",
        "errors by code",
        "p50 latency",
        "p99 latency",
        "events appended",
        "outcome",
        "batch size",
        "append latency",
        "projection lag",
        "applied",
        "commit latency",
        "queue depth",
        "leases expired",
        "label subscribers",
    ):
        assert wanted in titles, wanted


def test_histogram_quantiles_are_taken_over_rates_of_buckets(
    dashboard: dict[str, Any], alert_rules: list[dict[str, Any]]
) -> None:
    exprs = _dashboard_queries(dashboard) + [r["expr"] for r in alert_rules]
    quantiles = [e for e in exprs if "histogram_quantile" in e]
    assert quantiles
    for expr in quantiles:
        assert re.search(r"rate\(labelweave_[a-z_]+_bucket[{\[]", expr), expr
        assert re.search(r"by \([a-z, ]*\ble\b", expr), expr


# ---- metric names ---------------------------------------------------------------------------------------


def test_every_queried_metric_is_one_the_coordinator_exports(
    dashboard: dict[str, Any], alert_rules: list[dict[str, Any]]
) -> None:
    exposed = _exposed_sample_names()
    used: dict[str, str] = {}
    for expr in _dashboard_queries(dashboard):
        used.update(dict.fromkeys(METRIC_RE.findall(expr), "dashboard"))
    for rule in alert_rules:
        used.update(dict.fromkeys(METRIC_RE.findall(rule["expr"]), rule["alert"]))
    assert used
    unknown = {name: where for name, where in used.items() if name not in exposed}
    assert not unknown, f"not exported by coordinator/metrics.py: {unknown}"


def test_metric_names_in_prose_exist(dashboard: dict[str, Any]) -> None:
    known = _exposed_sample_names() | _family_names()
    texts = [
        ALERTS.read_text(encoding="utf-8"),
        json.dumps(dashboard),
        OPERATIONS_DOC.read_text(encoding="utf-8"),
    ]
    mentioned = {name for text in texts for name in METRIC_RE.findall(text)}
    assert not mentioned - known


def test_operations_doc_lists_every_metric() -> None:
    doc = OPERATIONS_DOC.read_text(encoding="utf-8")
    exposed = _exposed_sample_names()
    for family in Metrics(CollectorRegistry()).registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        assert name in exposed or family.type == "histogram"
        assert f"`{name}`" in doc, name
