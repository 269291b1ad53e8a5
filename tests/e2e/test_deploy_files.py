"""collector_config/deploy/ checked by the tools that would run it: the Kubernetes manifests by
kubeconform against the API's JSON schemas, the systemd units by ``systemd-analyze verify``; and
the promises the README makes about them (no Docker API write access, no OTLP intake on the
node's address, a priority class that is admitted, an explicit Prometheus bind address).

kubeconform comes from collector_config/deploy/kubeconform.sh (OTEL_GPU_KUBECONFORM, or its cached
install). Outside CI a missing tool skips its test; with ``CI`` set it fails it."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "collector_config" / "deploy"
MANIFESTS = sorted(DEPLOY.glob("kubernetes*.yaml"))
UNITS = sorted(DEPLOY.glob("*.service"))
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_docs() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in _docs(path)]


def _find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _all_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pod(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _find("DaemonSet", name)["spec"]["template"]["spec"]
    return spec


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# -- kubeconform -----------------------------------------------------------------------------


def _kubeconform() -> Path:
    given = os.environ.get("OTEL_GPU_KUBECONFORM")
    if given:
        if not os.access(given, os.X_OK):
            pytest.fail(f"OTEL_GPU_KUBECONFORM={given!r} is not an executable", pytrace=False)
        return Path(given)
    result = subprocess.run(["bash", str(DEPLOY / "kubeconform.sh"), "--cached"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        _missing("no kubeconform: set OTEL_GPU_KUBECONFORM or run "
                 "collector_config/deploy/kubeconform.sh")
    return Path(result.stdout.strip())


def _schema_versions(binary: Path) -> list[str]:
    schemas = binary.parent / "schemas"
    versions = sorted(p.name.removesuffix("-standalone-strict")
                      for p in schemas.glob("v*-standalone-strict"))
    assert versions, f"no schemas beside {binary} (kubeconform.sh lays them out in {schemas})"
    return versions


def _run_kubeconform(binary: Path, version: str,
                     paths: list[Path]) -> subprocess.CompletedProcess[str]:
    location = (f"{binary.parent}/schemas/{{{{ .NormalizedKubernetesVersion }}}}-standalone"
                "{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json")
    return subprocess.run(
        [str(binary), "-strict", "-summary", "-kubernetes-version", version.lstrip("v"),
         "-schema-location", location, *map(str, paths)],
        capture_output=True, text=True, check=False, timeout=120)


def test_manifests_pass_kubeconform_strict() -> None:
    binary = _kubeconform()
    resources = sum(len(_docs(p)) for p in MANIFESTS)
    for version in _schema_versions(binary):
        result = _run_kubeconform(binary, version, MANIFESTS)
        assert result.returncode == 0, f"Kubernetes {version}:\n{result.stdout}{result.stderr}"
        assert (f"{resources} resources found in {len(MANIFESTS)} files - Valid: {resources}, "
                "Invalid: 0, Errors: 0, Skipped: 0") in result.stdout, result.stdout


def test_kubeconform_schemas_refuse_an_unknown_field(tmp_path: Path) -> None:
    binary = _kubeconform()
    text = (DEPLOY / "kubernetes.yaml").read_text()
    assert "      hostPID: true\n" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("      hostPID: true\n",
                                "      hostPID: true\n      hostPid: true\n"))
    for version in _schema_versions(binary):
        result = _run_kubeconform(binary, version, [bad])
        assert result.returncode != 0, result.stdout
        assert "additional properties 'hostPid' not allowed" in result.stdout, result.stdout


# -- systemd-analyze verify ------------------------------------------------------------------


def _unit_root(tmp_path: Path, units: list[Path]) -> Path:
    """A root holding the host's own system units, ours, and a stand-in for each ExecStart."""
    system = next((d for d in SYSTEM_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if system is None:
        _missing("no systemd unit directory with sysinit.target on this host")
    root = tmp_path / "root"
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    ours = root / "etc/systemd/system"
    ours.mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, ours / unit.name)
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        program = parser["Service"]["ExecStart"].split()[0].lstrip("-@:+!")
        stand_in = root / program.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    return root


def _verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        _missing("systemd-analyze is not installed")
    return subprocess.run([tool, "verify", f"--root={root}", *names], capture_output=True,
                          text=True, check=False, timeout=120,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})


def test_systemd_units_pass_verify_without_a_warning(tmp_path: Path) -> None:
    root = _unit_root(tmp_path, UNITS)
    names = [u.name for u in UNITS]
    result = _verify(root, names)
    output = result.stdout + result.stderr
    about_ours = [line for line in output.splitlines()
                  if any(name in line or name.removesuffix(".service") in line for name in names)]
    assert result.returncode == 0, output
    assert not about_ours, "\n".join(about_ours)


def test_systemd_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: an unknown key and a missing program are both reported."""
    broken = tmp_path / "otelcol-gpu.service"
    broken.write_text((DEPLOY / "otelcol-gpu.service").read_text()
                      .replace("[Service]\n", "[Service]\nRestartSecs=5s\n"))
    root = _unit_root(tmp_path, [broken])
    result = _verify(root, [broken.name])
    assert "Unknown key" in result.stdout + result.stderr
    (root / "usr/local/bin/otelcol-gpu").unlink()
    result = _verify(root, [broken.name])
    assert result.returncode != 0
    assert "is not executable" in result.stdout + result.stderr


# -- what the files promise ------------------------------------------------------------------


def test_no_container_takes_a_host_port() -> None:
    for doc in _all_docs():
        if doc["kind"] != "DaemonSet":
            continue
        spec = doc["spec"]["template"]["spec"]
        assert not spec.get("hostNetwork"), doc["metadata"]["name"]
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for port in container.get("ports", []):
                assert "hostPort" not in port, f"{doc['metadata']['name']}: {port}"


def test_otlp_intake_is_a_node_local_service_the_agents_send_to() -> None:
    service = _find("Service", "otelcol-gpu-node")
    spec = service["spec"]
    assert spec["internalTrafficPolicy"] == "Local"
    assert spec.get("type", "ClusterIP") == "ClusterIP"
    collector = _find("DaemonSet", "otelcol-gpu-node")
    assert spec["selector"] == collector["spec"]["template"]["metadata"]["labels"]
    (container,) = collector["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["targetPort"]: p["port"] for p in spec["ports"]} == named == \
        {"otlp-grpc": 4317, "otlp-http": 4318}
    address = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:4317"
    for name in ("otel-gpu-agent", "otel-gpu-agent-docker"):
        (agent,) = [c for c in _pod(name)["containers"] if c["name"] == "agent"]
        assert _env(agent)["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == address


def test_priority_class_is_our_own() -> None:
    classes = {d["metadata"]["name"]: d for d in _all_docs() if d["kind"] == "PriorityClass"}
    for name in ("otel-gpu-agent", "otel-gpu-agent-docker", "otelcol-gpu-node"):
        wanted = _pod(name)["priorityClassName"]
        assert wanted in classes, f"{name}: {wanted} is not defined in the manifests"
        # Values above 1e9 are reserved for the system classes (PriorityClass API reference).
        assert 0 < classes[wanted]["value"] <= 1_000_000_000
        assert classes[wanted].get("globalDefault") is False


def test_only_the_docker_variant_reaches_docker_and_only_through_the_proxy() -> None:
    base = _pod("otel-gpu-agent")
    assert not [v for v in base["volumes"] if "docker" in str(v.get("hostPath", {}))]
    variant = _pod("otel-gpu-agent-docker")
    sockets = {v["name"] for v in variant["volumes"]
               if v.get("hostPath", {}).get("path") == "/var/run/docker.sock"}
    assert len(sockets) == 1
    for container in variant["containers"] + variant["initContainers"]:
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        assert bool(mounts & sockets) == (container["name"] == "docker-api-proxy"), \
            container["name"]
    assert variant["nodeSelector"]["otel-gpu/docker"] == "true"
    (term,) = base["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert {"key": "otel-gpu/docker", "operator": "NotIn", "values": ["true"]} in \
        term["matchExpressions"]


def _proxy_allow_list() -> dict[str, re.Pattern[str]]:
    (proxy,) = [c for c in _pod("otel-gpu-agent-docker")["initContainers"]
                if c["name"] == "docker-api-proxy"]
    assert proxy["restartPolicy"] == "Always"  # a sidecar: up before the agent starts
    allowed = {}
    for arg in proxy["args"]:
        match = re.fullmatch(r"-allow([A-Z]+)=(.*)", arg)
        if match:
            # socket-proxy anchors each pattern with ^ and $.
            allowed[match[1]] = re.compile(f"^{match[2]}$")
    return allowed


def test_docker_api_proxy_allows_only_the_gets_the_agent_makes() -> None:
    allowed = _proxy_allow_list()
    assert set(allowed) == {"GET"}
    container_id = "9401c676849a" + "0" * 52
    # The paths of otel_gpu/sources/docker.py (with and without an API version) and of doctor.
    for path in ("/containers/json", "/v1.43/containers/json", f"/containers/{container_id}/json",
                 f"/v1.47/containers/{container_id[:12]}/json", "/_ping"):
        assert allowed["GET"].match(path), path
    for path in (f"/containers/{container_id}/archive", "/containers/json/../../secrets",
                 f"/containers/{container_id}/logs", "/images/json", "/v1.43/secrets",
                 f"/containers/{container_id}/json/x"):
        assert not allowed["GET"].match(path), path


def test_docker_variant_is_the_agent_plus_the_proxy() -> None:
    base = _find("DaemonSet", "otel-gpu-agent")
    variant = _find("DaemonSet", "otel-gpu-agent-docker")

    def normalized(doc: dict[str, Any]) -> Any:
        doc = yaml.safe_load(yaml.safe_dump(doc))
        doc["metadata"]["name"] = "agent"
        for labels in (doc["metadata"]["labels"], doc["spec"]["selector"]["matchLabels"],
                       doc["spec"]["template"]["metadata"]["labels"]):
            labels["app.kubernetes.io/name"] = "agent"
        spec = doc["spec"]["template"]["spec"]
        spec.pop("affinity", None)
        spec.pop("initContainers", None)
        spec["nodeSelector"].pop("otel-gpu/docker", None)
        docker = {"docker-sock", "docker-api"}
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] not in docker]
        for container in spec["containers"]:
            container["volumeMounts"] = [m for m in container["volumeMounts"]
                                         if m["name"] not in docker]
        return doc

    assert normalized(variant) == normalized(base)


def test_prometheus_bind_address_is_explicit_where_a_scrape_comes_from_outside() -> None:
    for name in ("otel-gpu-agent", "otel-gpu-agent-docker"):
        (agent,) = [c for c in _pod(name)["containers"] if c["name"] == "agent"]
        env = _env(agent)
        assert env["OTEL_EXPORTER_PROMETHEUS_HOST"]["value"] == "$(POD_IP)"
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        names = list(env)
        assert names.index("POD_IP") < names.index("OTEL_EXPORTER_PROMETHEUS_HOST")
    unit = (DEPLOY / "otel-gpu-agent.service").read_text()
    assert re.search(r"^Environment=OTEL_EXPORTER_PROMETHEUS_HOST=\S+$", unit, re.M)
    assert "OTEL_EXPORTER_PROMETHEUS_HOST=0.0.0.0" in (DEPLOY / "Dockerfile").read_text()


def test_systemd_collector_takes_otlp_on_localhost_only() -> None:
    unit = (DEPLOY / "otelcol-gpu.service").read_text()
    for variable, port in (("OTELCOL_OTLP_GRPC_ENDPOINT", 4317),
                           ("OTELCOL_OTLP_HTTP_ENDPOINT", 4318)):
        assert f"\nEnvironment={variable}=localhost:{port}\n" in unit
    # Environment= comes before EnvironmentFile=, whose settings override it (systemd.exec(5)).
    assert unit.index("Environment=OTELCOL_OTLP") < unit.index("EnvironmentFile=")


def test_readme_lists_every_deployment_file() -> None:
    readme = (DEPLOY / "README.md").read_text().split("\n## ")[0]
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    present = {p.name for p in DEPLOY.iterdir() if p.name != "README.md"}
    assert listed == present


def test_install_steps_work_before_the_package_is_published() -> None:
    # Not on PyPI yet: every pip install names a checkout or a built wheel, never the name.
    root = DEPLOY.parents[1]
    texts = [root / "README.md", *UNITS, *DEPLOY.glob("*.md"), *(root / "docs").glob("*.md")]
    by_name = re.compile(r"pip install (?:-[-\w]+ )*[\"']?otel[-_]gpu\b")
    offenders = [f"{path.name}: {line.strip()}" for path in texts
                 for line in path.read_text().splitlines() if by_name.search(line)]
    assert not offenders, offenders
