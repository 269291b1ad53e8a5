"""collector_config/ without running anything: configs, dashboards and deployment files parse and
keep the rules the end-to-end test cannot see (documented variables, processor order, least
privilege in the manifests)."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "collector_config"
DEPLOY = CONFIG_DIR / "deploy"
CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "builder-config.yaml")
ENV_REF = re.compile(r"\$\{env:([A-Z0-9_]+)(?::-[^}]*)?\}")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_documents_every_variable_it_reads(path: Path) -> None:
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    undocumented = {name for name in ENV_REF.findall(body) if name not in header}
    assert not undocumented, f"{path.name}: say what these are in the header: {undocumented}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_pipelines_limit_memory_first_and_batch_last(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    base = yaml.safe_load((CONFIG_DIR / "node.yaml").read_text()) if path.name == "node-k8s.yaml" \
        else config
    pipelines = config["service"]["pipelines"]
    assert pipelines
    for name, pipeline in pipelines.items():
        processors = pipeline.get("processors") or base["service"]["pipelines"][name]["processors"]
        assert processors[0] == "memory_limiter", f"{path.name} {name}"
        assert processors[-1] == "batch", f"{path.name} {name}"


def test_builder_manifest_keeps_one_release() -> None:
    manifest = yaml.safe_load((CONFIG_DIR / "builder-config.yaml").read_text())
    build = (CONFIG_DIR / "build.sh").read_text()
    builder_version = re.search(r"^BUILDER_VERSION=(v[\d.]+)$", build, re.M)
    assert builder_version
    modules = [m["gomod"] for kind in ("receivers", "processors", "exporters", "extensions",
                                       "providers") for m in manifest[kind]]
    core_beta = {m.split()[1] for m in modules
                 if m.startswith("go.opentelemetry.io/collector/") and "/confmap/" not in m}
    assert core_beta == {builder_version[1]}


def test_build_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(CONFIG_DIR / "build.sh")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


# -- dashboards ------------------------------------------------------------------------------


DASHBOARDS = sorted((CONFIG_DIR / "dashboards").glob("*.json"))


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_is_importable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # Grafana's own $__rate_interval and $__range; $1 is label_replace's capture group.
            used = set(re.findall(r"\$([A-Za-z_]\w*)", target["expr"])) - {"__rate_interval",
                                                                           "__range"}
            assert used <= variables, f"{panel['title']}: {used - variables}"


# -- deployment examples ---------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]


def test_kubernetes_manifests_parse() -> None:
    kinds = [(d["kind"], d["metadata"]["name"]) for d in _manifests()]
    assert ("DaemonSet", "otel-gpu-agent") in kinds
    assert ("DaemonSet", "otelcol-gpu-node") in kinds
    assert all(d.get("apiVersion") for d in _manifests())


def test_agent_daemonset_has_what_attribution_needs_and_no_more() -> None:
    agent = next(d for d in _manifests()
                 if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "otel-gpu-agent")
    spec = agent["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert spec["runtimeClassName"] == "nvidia"
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "privileged" not in security
    assert container["resources"]["limits"]["memory"]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert set(host_paths.values()) == {"/sys/fs/cgroup", "/var/lib/kubelet/pod-resources"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all(mounts[name].get("readOnly") is True for name in host_paths)
    env = {e["name"]: e for e in container["env"]}
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_collector_daemonset_loads_configs_that_exist() -> None:
    node = next(d for d in _manifests()
                if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "otelcol-gpu-node")
    (container,) = node["spec"]["template"]["spec"]["containers"]
    configs = [a.split("/")[-1] for a in container["args"] if a.startswith("--config=")]
    assert configs == ["node.yaml", "node-k8s.yaml"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("name", ["otel-gpu-agent.service", "otelcol-gpu.service"])
def test_systemd_units_parse(name: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text())
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    service = parser["Service"]
    assert service["ExecStart"].split()[0].startswith("/")
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["ProtectSystem"] == "strict"


def test_dockerfile_stages_and_sources_exist() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    assert {"agent", "otelcol-gpu"} <= set(stages)
    root = CONFIG_DIR.parent
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert list(root.glob(source)), f"COPY {source}: nothing in the repository matches"
