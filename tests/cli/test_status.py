"""``otel-gpu status``: the tenant's view, on the simulated DGX A100 and in a container."""

from __future__ import annotations

import io
import json
import unicodedata
from dataclasses import replace

import pytest
from runner import ROOT, run_cli

from otel_gpu.cli.status import (
    Me,
    StatusView,
    build_view,
    collect_view,
    resolve_me,
)
from otel_gpu.cli.status_render import SCHEMA, status_document, status_table
from otel_gpu.cli.terminal import use_colour
from otel_gpu.snapshot import ContainerResources, Insight
from otel_gpu.sources.identity import SelfInfo

ALICE_TRAIN = "428e3fa081ee2a407e7516e6bc0357d4c01809ba241f1df76a563076d478b2c9"
BOB_JOB = "1eb73b423bef2013b3828f7956f51e9a860b7fb2774f5046ef4e13ab9ee5d6b5"


@pytest.fixture(scope="module")
def alice() -> StatusView:
    view, message = collect_view(simulate="dgx-a100", interval_s=None, cycles=2, as_user="alice")
    assert message is None
    return view


def _plain(text: str) -> str:
    import re

    return re.sub(r"\033\[[0-9;]*m", "", text)


def test_alice_sees_her_containers_only(alice: StatusView) -> None:
    doc = status_document(alice)
    assert doc["schema"] == SCHEMA
    assert doc["me"]["scope"] == "user" and doc["me"]["user"] == "alice"
    assert doc["host"] == {**doc["host"], "name": "dgx-a100", "simulated": True,
                           "driver_version": "550.54.15", "cycles": 2, "interval_s": 10.0}
    names = [w["attributes"].get("container.name") or w["attributes"]["k8s.pod.name"]
             for w in doc["workloads"]]
    # alice-eval-0 runs nothing: it is hers by its securityContext.runAsUser
    assert names == ["alice-dev", "alice-eval-0", "alice-notebook", "alice-train"]
    assert all(w["owners"] == ["alice"] for w in doc["workloads"])
    assert "bob" not in json.dumps(doc) and "carol" not in json.dumps(doc)


def test_what_alice_was_given_and_uses(alice: StatusView) -> None:
    doc = status_document(alice)
    by_name = {w["attributes"].get("container.name", ""): w for w in doc["workloads"]}
    train = by_name["alice-train"]
    assert [d["hw.name"] for d in train["devices"]] == ["gpu2", "gpu3"]
    assert all(d["given"] and d["mig_profile"] is None for d in train["devices"])
    gpu2 = train["devices"][0]
    assert gpu2["activity_source"] == "process_sm" and gpu2["activity"] == pytest.approx(0.93)
    assert gpu2["my_memory_bytes"] == 37044092928 and gpu2["processes"] == 1
    assert train["cpu"]["limit"] == 16
    # cycle 1 used 66 % of the 16 CPUs; the rate comes from the cgroup's CPU time counters.
    assert train["cpu"]["ratio"] == pytest.approx(0.66, abs=0.01)
    assert train["cpu"]["throttled_ratio"] == pytest.approx(0.02, abs=0.005)
    assert train["memory"]["limit_bytes"] == 137438953472
    assert train["memory"]["used_bytes"] == 62277025792
    notebook = by_name["alice-notebook"]["devices"][0]
    assert notebook["hw.name"] == "gpu0/mig2" and notebook["mig_profile"] == "1g.5gb"
    # No GPM on A100: the slice's activity comes from DCGM (the notebook computes nothing).
    assert notebook["hw.parent"] and notebook["activity"] == 0.0 and notebook["note"] is None


def test_table_fits_80_columns_without_colour(alice: StatusView) -> None:
    table = status_table(alice)
    assert "\033[" not in table
    assert all(len(line) <= 80 for line in table.splitlines())
    assert "alice-train" in table and "gpu0/mig2" in table and "MIG 1g.5gb" in table
    assert "10.6 of 16 CPUs" in table


def test_colour_only_on_a_terminal(alice: StatusView) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_colour(Tty(), environ={"TERM": "xterm"})
    assert not use_colour(Tty(), environ={"TERM": "xterm", "NO_COLOR": "1"})
    assert not use_colour(io.StringIO(), environ={})
    coloured = status_table(alice, colour=True)
    assert "\033[" in coloured
    assert all(len(_plain(line)) <= 80 for line in coloured.splitlines())
    assert _plain(coloured) == status_table(alice)


def test_cli_output_is_reproducible() -> None:
    args = ("status", "--simulate", "dgx-a100", "--as-user", "alice")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    doc = json.loads(run_cli(*args, "--format", "json").stdout)
    assert len(doc["workloads"]) == 4


def test_root_sees_every_workload_and_idle_assignments(alice: StatusView) -> None:
    me = resolve_me(simulate=True, as_user=None, info=SelfInfo(uid=0, user="root"), euid=0)
    assert me.scope == "all"
    view = build_view(alice.snapshot, me)
    ids = {g.attributes.get("container.id") for g in view.groups}
    assert ALICE_TRAIN in ids and BOB_JOB in ids
    idle = [g for g in view.groups if g.attributes.get("k8s.pod.name") == "alice-eval-0"]
    assert idle and idle[0].devices[0].given and idle[0].devices[0].processes == 0
    owners = {o for g in view.groups for o in g.owners}
    assert owners == {"alice", "bob", "carol"}


def test_who_i_am() -> None:
    user = resolve_me(simulate=True, as_user=None, info=SelfInfo(uid=1000, user="alice"),
                      euid=1000)
    assert (user.scope, user.user) == ("user", "alice")
    assert resolve_me(simulate=False, as_user="1001", info=SelfInfo(), euid=0).uid == 1001
    host_root = resolve_me(simulate=False, as_user=None, info=SelfInfo(uid=0), euid=0)
    assert host_root.scope == "all"
    boxed = resolve_me(simulate=False, as_user=None, euid=1000, info=SelfInfo(
        container_id="c" * 64, uid=1000, user="alice", devices=("GPU-x",),
        host_pid_namespace=False, attribution_note="no host pids"))
    assert boxed.scope == "container" and not boxed.attribution and boxed.note
    shared = resolve_me(simulate=False, as_user=None, euid=0, info=SelfInfo(
        container_id="c" * 64, host_pid_namespace=True))
    assert shared.attribution and shared.owns({"container.id": "c" * 64})
    assert not shared.owns({"container.id": "d" * 64})


def test_in_a_container_without_host_pids_it_shows_the_given_devices(alice: StatusView) -> None:
    snap = alice.snapshot
    mig = next(m for g in snap.gpus for m in g.mig_devices if m.name == "gpu0/mig2")
    me = Me("container", user="alice", container_id="c" * 64, devices=(mig.uuid, "3"),
            attribution=False, note="NVML reports host pids")
    before = ContainerResources(cgroup_version=2, cpu_user_s=10.0, cpu_system_s=2.0,
                                cpu_limit=4.0, cpu_periods=100, cpu_throttled_periods=10,
                                memory_usage_bytes=2**30, memory_limit_bytes=2**32)
    now = replace(before, cpu_user_s=25.0, cpu_system_s=5.0, cpu_periods=200,
                  cpu_throttled_periods=60)
    previous = replace(snap, timestamp=snap.timestamp - 10.0)
    view = build_view(snap, me, previous=previous, own_resources=(now, before))
    (group,) = view.groups
    assert [d.name for d in group.devices] == ["gpu0/mig2", "gpu3"]
    assert group.cpu_used == pytest.approx(1.8) and group.cpu_throttled_ratio == 0.5
    table = status_table(view)
    assert "this container" in table and "NVML reports host pids" in table
    assert "1.8 of 4 CPUs, throttled 50%" in table


def test_insights_that_apply_to_me(alice: StatusView) -> None:
    gpu2 = next(g for g in alice.snapshot.gpus if g.name == "gpu2")
    gpu7 = next(g for g in alice.snapshot.gpus if g.name == "gpu7")
    mine = Insight("cpu_throttled", "warning", "alice-train is throttled 30 % of the time",
                   "raise the CPU limit", {"container.id": ALICE_TRAIN}, 0.0)
    bobs = Insight("input_bound", "warning", "bob-job-0 waits for data", "more workers",
                   {"container.id": BOB_JOB, "process.owner": "bob"}, 0.0)
    my_gpu = Insight("high_temperature", "critical", "gpu2 at 90 C", "check cooling",
                     {"hw.id": gpu2.uuid, "hw.name": "gpu2"}, 0.0)
    other_gpu = Insight("high_temperature", "warning", "gpu7 at 87 C", "check cooling",
                        {"hw.id": gpu7.uuid, "hw.name": "gpu7"}, 0.0)
    host = Insight("host_memory_pressure", "warning", "host memory 93 % used", "free memory",
                   {}, 0.0)
    snap = replace(alice.snapshot, insights=(bobs, other_gpu, host, my_gpu, mine))
    me = Me("user", user="alice")
    view = build_view(snap, me)
    doc = status_document(view)
    train = next(w for w in doc["workloads"] if w["attributes"]["container.id"] == ALICE_TRAIN)
    assert [i["rule"] for i in train["insights"]] == ["cpu_throttled"]
    assert train["insights"][0]["remedy"] == "raise the CPU limit"
    assert [i["rule"] for i in doc["insights"]] == ["high_temperature", "host_memory_pressure"]
    assert doc["insights"][0]["attributes"]["hw.name"] == "gpu2"
    table = status_table(view)
    assert "WARNING cpu_throttled: alice-train is throttled" in table
    assert "fix: raise the CPU limit" in table and "bob" not in table and "gpu7 at" not in table
    assert all(len(line) <= 80 for line in table.splitlines())
    everyone = status_document(build_view(snap, Me("all")))
    assert len(everyone["insights"]) + sum(len(w["insights"]) for w in everyone["workloads"]) == 5


def test_without_a_driver_it_still_answers() -> None:
    result = run_cli("status", "--cycles", "1", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == SCHEMA and doc["host"]["simulated"] is False


def test_bad_scenario_is_a_usage_error(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus: [{model: A100-SXM4-40GB, nonsense: 1}]\n")
    result = run_cli("status", "--simulate", str(bad))
    assert result.returncode == 2 and "nonsense" in result.stderr


@pytest.mark.parametrize(("scenario", "shown"), [
    ("hostile-names.yaml", ["pod]2;retitledfake-line/ctr[31m", "ns[2J[H", "mal]0;ownedlory"]),
    ("hostile-container.yaml", ["evil[31mred[0mname", "registry.example/evil:tag"]),
])
def test_hostile_names_print_no_control_or_format_character(scenario: str,
                                                            shown: list[str]) -> None:
    result = run_cli("status", "--simulate", str(ROOT / "tests" / "scenarios" / scenario))
    assert result.returncode == 0, result.stderr
    for needle in shown:  # the names are there, only their control characters are gone
        assert needle in result.stdout
    for line in result.stdout.split("\n"):
        bad = [c for c in line if unicodedata.category(c)[0] == "C" or c in "\u2028\u2029"]
        assert not bad, (line, bad)


def test_readme_shows_the_real_output() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    command = "$ otel-gpu status --simulate dgx-a100 --as-user alice\n"
    assert command in readme
    shown = readme.split(command, 1)[1].split("```", 1)[0]
    result = run_cli("status", "--simulate", "dgx-a100", "--as-user", "alice")
    assert result.stdout == shown


def test_processes_outside_containers_are_in_use_not_given() -> None:
    view, _ = collect_view(simulate="dgx-a100", interval_s=None, cycles=1, as_user="bob")
    bare = [g for g in view.groups if "container.id" not in g.attributes]
    assert [g.owners for g in bare] == [["bob"]]
    assert [d.name for d in bare[0].devices] == ["gpu6"] and not bare[0].devices[0].given
    table = status_table(view)
    assert "processes of bob  (no container, user bob)" in table
    assert "  using   gpu6  A100-SXM4-40GB, 40.0 GiB" in table


def test_alice_sees_the_activity_of_her_a100_slices_from_dcgm(alice: StatusView) -> None:
    doc = status_document(alice)
    by_name = {w["attributes"].get("container.name", ""): w for w in doc["workloads"]}
    dev = by_name["alice-dev"]["devices"][0]
    notebook = by_name["alice-notebook"]["devices"][0]
    assert dev["hw.name"] == "gpu1/mig1" and notebook["hw.name"] == "gpu0/mig2"
    assert dev["activity_source"] == "dcgm_sm" and dev["activity"] == pytest.approx(0.06)
    assert notebook["activity_source"] == "dcgm_sm" and notebook["activity"] == 0.0
    table = _plain(status_table(alice, colour=False))
    assert "gpu1/mig1 SM" in table and "DCGM" in table
    assert "not reported" not in table


def test_without_dcgm_status_says_in_one_line_what_would_give_slice_activity(tmp_path) -> None:
    import yaml

    from otel_gpu.simulate.scenario import BUILTIN_DIR

    doc = yaml.safe_load((BUILTIN_DIR / "dgx-a100.yaml").read_text())
    doc["dcgm"] = {"hostengine": False}
    path = tmp_path / "no-dcgm.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = run_cli("status", "--simulate", str(path), "--as-user", "alice", "--format", "table",
                     env={"NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines()
             if line.strip().startswith("gpu1/mig1 util")]
    assert len(lines) == 1
    assert "needs DCGM" in lines[0] and "nv-hostengine" in lines[0]


def test_alice_sees_her_shm_disk_and_network(alice: StatusView) -> None:
    doc = status_document(alice)
    train = next(g for g in doc["workloads"] if g["attributes"]["container.id"] == ALICE_TRAIN)
    assert train["shm"] == {"size_bytes": 16 << 30, "used_bytes": 2684354560,
                            "ratio": 2684354560 / (16 << 30), "configured_bytes": 16 << 30,
                            "ipc_host": False, "dataloader_workers": 8}
    assert train["disk"]["writable_layer_bytes"] == 1288490188
    assert train["disk"]["writable_layer_growth_bytes_per_s"] is None  # one sample so far
    assert train["network"] == {"receive_bytes_per_s": 48234496.0,
                                "transmit_bytes_per_s": 1048576.0}
    table = _plain(status_table(alice))
    block = table.split("alice-train  (", 1)[1].split("\n\n", 1)[0]
    assert "  shm               [###-----------------]   16%  2.5 GiB of 16.0 GiB, 8 workers" \
        in block
    assert "  disk              1.2 GiB in the container's own layer" in block
    assert "  network           received 48.2 MB/s, sent 1.0 MB/s" in block


def test_in_a_container_without_host_pids_it_shows_its_own_shm_and_network() -> None:
    from otel_gpu.snapshot import ContainerNetwork, ContainerStorage, Snapshot

    me = Me("container", user="alice", uid=1000, container_id=ALICE_TRAIN, attribution=False)
    snap = Snapshot(cycle=1, timestamp=20.0, driver_available=True)
    before = Snapshot(cycle=0, timestamp=10.0, driver_available=True)
    view = build_view(snap, me, previous=before,
                      own_storage=ContainerStorage(shm_size_bytes=64 << 20,
                                                   shm_used_bytes=60 << 20),
                      own_network=(ContainerNetwork(3000, 10**9, 2, 9),
                                   ContainerNetwork(1000, 0, 1, 1)))
    group = status_document(view)["workloads"][0]
    assert group["shm"]["ratio"] == 60 / 64
    assert group["network"] == {"receive_bytes_per_s": 200.0, "transmit_bytes_per_s": 1e8}
    assert "60 MiB of 64 MiB, the default" in _plain(status_table(view))
