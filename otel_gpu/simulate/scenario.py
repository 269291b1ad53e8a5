"""Scenario files: a simulated GPU server described in YAML or JSON, loaded and validated into
the model of :mod:`otel_gpu.simulate.spec`.

A scenario names its GPUs (models from the hardware catalog), their MIG layouts and the processes
on them, the containers and pods that own those processes, the users, and optional host figures.
Every mistake is reported as a :class:`ScenarioError` naming the file, the key (a dotted path such
as ``gpus[2].mig.instances[1].profile``) and what is wrong.

Values over time
----------------
A value written as a list is a sequence over collection cycles: cycle k uses element k and the
last element repeats. In the loaded model a sequence is a :class:`PerCycle` (a tuple subclass);
:func:`at_cycle` picks the element for a cycle and returns every other value unchanged.

Only fields that can change between cycles take sequences (utilization, memory, power,
temperatures, clocks, counters, GPM values, per-process and per-container figures, host figures).
For those, the rule is:

- a field whose value is a scalar (number, bool): any list is a sequence;
- a field whose value is itself a list (``clocks_event_reasons``, a list of reason names): a list
  whose elements are all lists is a sequence, one list of names per cycle; a list of names is the
  same set of names at every cycle, and ``[]`` means no reason;
- a field whose value is a mapping (``clocks_mhz``, ``ecc_errors``, ``remapped_rows``, ``gpm``,
  ``resources``): each member may be a sequence, the mapping itself may not.

Structural fields (models, UUIDs, pids, placements, device lists, labels, fault cycle lists) are
fixed; a list given where a scalar is expected there is a type error. Ratios are 0..1.

MIG layouts
-----------
``mig.instances`` is the layout at cycle 0 (generation 0); each ``mig.reconfigure`` entry applies
a new layout (generation 1, 2, ...) from its cycle on. A reconfiguration needs the GPU drained of
clients, so the processes of the previous layout are gone from that cycle; a ``reconfigure``
entry may list the ``processes`` that run on its layout. Each process's ``mig_instance`` indexes
the instances of the layout it belongs to. An instance without ``start`` takes the first allowed
free placement, as ``nvidia-smi mig -cgi`` does.

Identifiers
-----------
UUIDs not given are derived with uuid5 from the scenario name and the position: ``GPU-<uuid>``
for GPU i and ``MIG-<uuid>`` for instance j of layout generation g of GPU i, so two loads of one
scenario give the same ids and a reconfigured layout gets new ones.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from otel_gpu.simulate.hardware import GpuModel
from otel_gpu.simulate.scenario_checks import (
    CLAIM_KEYS,
    CONTAINER_KEYS,
    DCGM_FAULT_KEYS,
    DCGM_KEYS,
    DCGM_VALUE_KEYS,
    DRIVER_KEYS,
    FILESYSTEM_KEYS,
    HEX_DIGITS,
    HOST_KEYS,
    KUBELET_KEYS,
    MAX_FILE_INTEGER,
    MAX_PID,
    MAX_UID,
    MOUNT_KEYS,
    NVLINK_KEYS,
    POD_CONTAINER_KEYS,
    POD_KEYS,
    RESOURCE_KEYS,
    TOP_KEYS,
    ScenarioError,
    kind_of,
)
from otel_gpu.simulate.scenario_gpu import (
    GpuChecks,
    derive_gpu_uuid,
    derive_mig_uuid,
    has_dcgm_values,
)
from otel_gpu.simulate.spec import (
    DCGM_FAULT_ERRORS,
    DCGM_FAULTABLE_CALLS,
    DRIVER_FAULTABLE_CALLS,
    ClaimSpec,
    ContainerSpec,
    DcgmFault,
    DcgmSpec,
    DcgmValues,
    DriverSpec,
    Fault,
    FilesystemSpec,
    HostSpec,
    KubeletSpec,
    MountSpec,
    NvLinkSpec,
    PerCycle,
    PodSpec,
    Resources,
    Scenario,
    at_cycle,
    device_refs,
)

__all__ = [
    "BUILTIN_DIR",
    "PerCycle",
    "Scenario",
    "ScenarioError",
    "at_cycle",
    "builtin_names",
    "derive_gpu_uuid",
    "derive_mig_uuid",
    "load_scenario",
]

BUILTIN_DIR = Path(__file__).with_name("scenarios")
DEFAULT_DRIVER_VERSION = "550.54.15"
# Linux's PID_MAX_LIMIT on 64-bit kernels (include/linux/threads.h: 4 * 1024 * 1024).


def builtin_names() -> list[str]:
    """The names of the built-in scenarios."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_scenario(spec: str) -> Scenario:
    """Load a built-in scenario by name, or a scenario file (YAML or JSON) by path."""
    path = Path(spec)
    if not path.is_file():
        builtin = BUILTIN_DIR / f"{spec}.yaml"
        if "/" not in spec and builtin.is_file():
            path = builtin
        else:
            known = ", ".join(builtin_names())
            raise ScenarioError(
                spec, "(file)", f"no such scenario file or built-in scenario (built-ins: {known})"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(str(path), "(file)", f"cannot read: {exc}") from exc
    document = _parse(text, str(path))
    return _Loader(str(path)).scenario(document, default_name=path.stem)


def _parse(text: str, path: str) -> Any:
    try:
        return _parse_text(text, path)
    except RecursionError:
        # Both parsers recurse once per level of brackets or indentation.
        raise ScenarioError(path, "(file)", "nested too deeply to be a scenario") from None


def _parse_text(text: str, path: str) -> Any:
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as exc:  # JSONDecodeError, or a number of more than 4300 digits
            raise ScenarioError(path, "(file)", f"JSON syntax error: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except ValueError as exc:  # int() refusing a number of more than 4300 digits
        raise ScenarioError(path, "(file)", f"YAML value error: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(path, "(file)", f"YAML syntax error{where}: {problem}") from exc


class _Loader(GpuChecks):
    """Turns a parsed document into a Scenario, raising ScenarioError at the first mistake."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.name = ""

    # -- the document --

    def scenario(self, document: Any, default_name: str) -> Scenario:
        if document is None:
            raise self.error("(file)", "the file is empty")
        raw = self.mapping(document, "(file)", TOP_KEYS, required=("gpus",))
        self.name = self.string(raw["name"], "name") if "name" in raw else default_name
        description = (
            self.string(raw["description"], "description") if "description" in raw else None
        )
        driver = raw.get("driver_version", DEFAULT_DRIVER_VERSION)
        if not isinstance(driver, str) or not driver:
            raise self.error("driver_version",
                             f"expected a string (quote it), got {kind_of(driver)}")
        users = self.users(raw.get("users", {}))
        gpus = tuple(
            self.gpu(item, f"gpus[{i}]", i)
            for i, item in enumerate(self.list_of(raw["gpus"], "gpus"))
        )
        self.check_unique_uuids(gpus)
        self.check_processes_consistent(gpus)
        refs = device_refs(gpus)
        containers = tuple(
            self.container(item, f"containers[{i}]", refs)
            for i, item in enumerate(self.list_of(raw.get("containers", []), "containers"))
        )
        pods = tuple(
            self.pod(item, f"pods[{i}]", refs)
            for i, item in enumerate(self.list_of(raw.get("pods", []), "pods"))
        )
        self.check_unique_containers(containers, pods)
        host = self.host(raw["host"]) if "host" in raw else None
        kubelet = self.kubelet(raw["kubelet"]) if "kubelet" in raw else KubeletSpec()
        dcgm = self.dcgm_service(raw["dcgm"]) if "dcgm" in raw else None
        if dcgm is None and any(has_dcgm_values(gpu) for gpu in gpus):
            dcgm = DcgmSpec()
        driver_spec = self.driver(raw["driver"]) if "driver" in raw else DriverSpec()
        return Scenario(
            name=self.name,
            path=self.path,
            driver_version=driver,
            description=description,
            users=users,
            containers=containers,
            pods=pods,
            gpus=gpus,
            host=host,
            kubelet=kubelet,
            dcgm=dcgm,
            driver=driver_spec,
        )

    def driver(self, value: Any) -> DriverSpec:
        raw = self.mapping(value, "driver", DRIVER_KEYS)
        init_fails = 0
        if "init_fails_cycles" in raw:
            init_fails = self.integer(raw["init_fails_cycles"], "driver.init_fails_cycles")
        faults: tuple[Fault, ...] = ()
        if "faults" in raw:
            faults = self.faults(raw["faults"], "driver.faults", DRIVER_FAULTABLE_CALLS)
        return DriverSpec(init_fails_cycles=init_fails, faults=faults)

    def dcgm_service(self, value: Any) -> DcgmSpec:
        raw = self.mapping(value, "dcgm", DCGM_KEYS)
        flags = {
            name: self.boolean(raw[name], f"dcgm.{name}")
            for name in ("hostengine", "exporter", "profiling_module")
            if name in raw
        }
        version = self.string(raw["version"], "dcgm.version") if "version" in raw else None
        faults = []
        for i, item in enumerate(self.list_of(raw.get("faults", []), "dcgm.faults")):
            key = f"dcgm.faults[{i}]"
            entry = self.mapping(item, key, DCGM_FAULT_KEYS, ("call", "error"))
            call = self.string(entry["call"], f"{key}.call")
            if call not in DCGM_FAULTABLE_CALLS:
                known = ", ".join(sorted(DCGM_FAULTABLE_CALLS))
                raise self.error(f"{key}.call", f"'{call}' is not a DCGM call ({known})")
            error = self.string(entry["error"], f"{key}.error").removeprefix("DCGM_ST_")
            if error not in DCGM_FAULT_ERRORS:
                known = ", ".join(sorted(DCGM_FAULT_ERRORS))
                raise self.error(f"{key}.error", f"unknown DCGM error '{error}' ({known})")
            if (error == "Malformed") != (call == "scrape"):
                raise self.error(f"{key}.error", "Malformed goes with call scrape, and only it")
            cycles = self.cycle_list(entry["cycles"], f"{key}.cycles") if "cycles" in entry \
                else None
            faults.append(DcgmFault(call, error, cycles))
        return DcgmSpec(
            **flags, **({"version": version} if version else {}), faults=tuple(faults)
        )

    def dcgm_values(self, value: Any, key: str) -> DcgmValues:
        raw = self.mapping(value, key, DCGM_VALUE_KEYS)
        return DcgmValues(**{
            name: self.optional(raw, key, name,
                                self.number if name.endswith("_per_s") else self.ratio)
            for name in raw
        })

    def nvlinks(self, value: Any, key: str, model: GpuModel) -> tuple[NvLinkSpec, ...]:
        links: list[NvLinkSpec] = []
        for i, item in enumerate(self.list_of(value, key)):
            item_key = f"{key}[{i}]"
            raw = self.mapping(item, item_key, NVLINK_KEYS, ("link",))
            link = self.integer(raw["link"], f"{item_key}.link")
            if link >= model.nvlinks:
                raise self.error(f"{item_key}.link",
                                 f"{model.key} has {model.nvlinks} NVLinks (0-{model.nvlinks - 1})")
            if any(other.link == link for other in links):
                raise self.error(f"{item_key}.link", f"link {link} is listed twice")
            values: dict[str, Any] = {}
            for name in raw:
                if name == "link":
                    continue
                if name == "active":
                    check: Callable[[Any, str], Any] = self.boolean
                elif name.endswith("_per_s"):
                    check = self.number
                else:
                    check = self.integer
                values[name] = self.varying(raw[name], f"{item_key}.{name}", check)
            links.append(NvLinkSpec(link=link, **values))
        return tuple(links)

    def kubelet(self, value: Any) -> KubeletSpec:
        raw = self.mapping(value, "kubelet", KUBELET_KEYS)
        return KubeletSpec(
            **{name: self.boolean(flag, f"kubelet.{name}") for name, flag in raw.items()}
        )

    def users(self, value: Any) -> dict[int, str]:
        if not isinstance(value, dict):
            raise self.error("users",
                             f"expected a mapping of uid to user name, got {kind_of(value)}")
        users: dict[int, str] = {}
        for raw_uid, name in value.items():
            key = f"users.{raw_uid}"
            if isinstance(raw_uid, str) and raw_uid.isdigit():
                uid = int(raw_uid)
            elif isinstance(raw_uid, int) and not isinstance(raw_uid, bool) and raw_uid >= 0:
                uid = raw_uid
            else:
                raise self.error(key, "a uid must be a non-negative integer")
            if uid > MAX_UID:
                raise self.error(key, f"a uid must be at most {MAX_UID}")
            users[uid] = self.string(name, key)
        return users

    # -- GPUs --

    def container_id(self, value: Any, key: str) -> str:
        text = self.string(value, key)
        if len(text) != 64 or not set(text) <= HEX_DIGITS:
            raise self.error(key, "expected a container id of 64 lowercase hex digits")
        return text

    def devices(self, value: Any, key: str, refs: dict[str, str]) -> tuple[tuple[str, ...], ...]:
        written, resolved = [], []
        for k, item in enumerate(self.list_of(value, key)):
            ref = self.string(item, f"{key}[{k}]")
            if ref not in refs:
                raise self.error(
                    f"{key}[{k}]", f"'{ref}' names no GPU or MIG device of this scenario"
                )
            written.append(ref)
            resolved.append(refs[ref])
        return tuple(written), tuple(resolved)

    def resources(self, value: Any, key: str) -> Resources:
        raw = self.mapping(value, key, RESOURCE_KEYS)
        checks: dict[str, Callable[[Any, str], Any]] = {
            "cpu_limit": lambda v, k: self.number(v, k, minimum=0.001),
            "cpu_utilization": self.ratio,
            "cpu_throttled_ratio": self.ratio,
            "memory_limit_bytes": lambda v, k: self.integer(v, k, maximum=MAX_FILE_INTEGER),
            "memory_used_bytes": lambda v, k: self.integer(v, k, maximum=MAX_FILE_INTEGER),
            "oom_kills": self.integer,
            "disk_read_bytes_per_s": self.integer,
            "disk_write_bytes_per_s": self.integer,
            "network_rx_bytes_per_s": self.integer,
            "network_tx_bytes_per_s": self.integer,
            "io_pressure_some": self.ratio,
            "io_pressure_full": self.ratio,
            "memory_pressure_some": self.ratio,
            "memory_pressure_full": self.ratio,
        }
        return Resources(**{name: self.optional(raw, key, name, checks[name]) for name in raw})

    def container(self, value: Any, key: str, refs: dict[str, str]) -> ContainerSpec:
        raw = self.mapping(value, key, CONTAINER_KEYS, required=("id", "name"))
        labels_raw = raw.get("labels", {})
        if not isinstance(labels_raw, dict):
            raise self.error(f"{key}.labels", f"expected a mapping, got {kind_of(labels_raw)}")
        labels = {
            str(name): self.string(text, f"{key}.labels.{name}")
            for name, text in labels_raw.items()
        }
        written, resolved = self.devices(raw.get("devices", []), f"{key}.devices", refs)
        return ContainerSpec(
            id=self.container_id(raw["id"], f"{key}.id"),
            name=self.string(raw["name"], f"{key}.name"),
            image=self.string(raw["image"], f"{key}.image") if "image" in raw else None,
            labels=labels,
            devices=written,
            device_uuids=resolved,
            resources=self.resources(raw.get("resources", {}), f"{key}.resources"),
            user=self.string(raw["user"], f"{key}.user") if "user" in raw else None,
            pid=self.integer(raw["pid"], f"{key}.pid", minimum=1, maximum=MAX_PID)
            if "pid" in raw else None,
            uid=self.integer(raw["uid"], f"{key}.uid", maximum=MAX_UID) if "uid" in raw else 0,
            host_network=self.boolean(raw["host_network"], f"{key}.host_network")
            if "host_network" in raw else False,
        )

    def pod(self, value: Any, key: str, refs: dict[str, str]) -> PodSpec:
        raw = self.mapping(value, key, POD_KEYS, ("namespace", "name", "uid"))
        uid = self.string(raw["uid"], f"{key}.uid")
        try:
            uuidlib.UUID(uid)
        except ValueError:
            raise self.error(f"{key}.uid", f"expected a pod UID (a UUID), got '{uid}'") from None
        containers = []
        for i, item in enumerate(self.list_of(raw.get("containers", []), f"{key}.containers")):
            item_key = f"{key}.containers[{i}]"
            self.mapping(item, item_key, POD_CONTAINER_KEYS, ("name", "id"))
            plain = {k: v for k, v in item.items() if k != "claims"}
            listed = self.list_of(item.get("claims", []), f"{item_key}.claims")
            claims = tuple(
                self.claim(claim, f"{item_key}.claims[{c}]", refs) for c, claim in enumerate(listed)
            )
            containers.append(replace(self.container(plain, item_key, refs), claims=claims))
        return PodSpec(
            namespace=self.string(raw["namespace"], f"{key}.namespace"),
            name=self.string(raw["name"], f"{key}.name"),
            uid=uid,
            containers=tuple(containers),
            run_as_user=self.integer(raw["run_as_user"], f"{key}.run_as_user", maximum=MAX_UID)
            if "run_as_user" in raw else None,
        )

    def claim(self, value: Any, key: str, refs: dict[str, str]) -> ClaimSpec:
        raw = self.mapping(value, key, CLAIM_KEYS, ("name", "devices"))
        written, resolved = self.devices(raw["devices"], f"{key}.devices", refs)
        if not written:
            raise self.error(f"{key}.devices", "a claim allocates at least one device")
        return ClaimSpec(
            name=self.string(raw["name"], f"{key}.name"),
            devices=written,
            device_uuids=resolved,
            driver=self.string(raw["driver"], f"{key}.driver") if "driver" in raw
            else ClaimSpec.driver,
        )

    def check_unique_containers(
        self, containers: tuple[ContainerSpec, ...], pods: tuple[PodSpec, ...]
    ) -> None:
        seen: dict[str, str] = {}
        owned = [(f"containers[{i}].id", c.id) for i, c in enumerate(containers)]
        for p, pod in enumerate(pods):
            owned += [(f"pods[{p}].containers[{i}].id", c.id) for i, c in enumerate(pod.containers)]
        for key, value in owned:
            if value in seen:
                raise self.error(key, f"container id is also used by {seen[value]}")
            seen[value] = key

    def host(self, value: Any) -> HostSpec:
        raw = self.mapping(value, "host", HOST_KEYS)
        filesystems = []
        for i, item in enumerate(self.list_of(raw.get("filesystems", []), "host.filesystems")):
            key = f"host.filesystems[{i}]"
            fs = self.mapping(item, key, FILESYSTEM_KEYS, required=sorted(FILESYSTEM_KEYS))
            mountpoint = self.string(fs["mountpoint"], f"{key}.mountpoint")
            if not mountpoint.startswith("/"):
                raise self.error(f"{key}.mountpoint", "expected an absolute path")
            size = self.varying(fs["size_bytes"], f"{key}.size_bytes", self.integer)
            used = self.varying(fs["used_bytes"], f"{key}.used_bytes", self.integer)
            largest = max(size) if isinstance(size, PerCycle) else size
            for k, amount in enumerate(used if isinstance(used, PerCycle) else [used]):
                if amount > largest:
                    suffix = f"[{k}]" if isinstance(used, PerCycle) else ""
                    raise self.error(
                        f"{key}.used_bytes{suffix}", f"{amount} is more than size_bytes"
                    )
            filesystems.append(FilesystemSpec(mountpoint, size, used))
        mounts = tuple(self.mount(item, f"host.mounts[{i}]")
                       for i, item in enumerate(self.list_of(raw.get("mounts", []),
                                                             "host.mounts")))
        return HostSpec(
            memory_used_ratio=self.optional(raw, "host", "memory_used_ratio", self.ratio),
            cpu_utilization=self.optional(raw, "host", "cpu_utilization", self.ratio),
            filesystems=tuple(filesystems),
            mounts=mounts,
        )

    def mount(self, value: Any, key: str) -> MountSpec:
        raw = self.mapping(value, key, MOUNT_KEYS,
                           required=("mountpoint", "device", "type", "size_bytes", "used_bytes"))
        texts = {}
        for name in ("mountpoint", "device", "type"):
            text = self.string(raw[name], f"{key}.{name}")
            if any(c.isspace() for c in text):
                raise self.error(f"{key}.{name}", "the simulated mounts file has no escapes: "
                                 "no white space")
            texts[name] = text
        if not texts["mountpoint"].startswith("/"):
            raise self.error(f"{key}.mountpoint", "expected an absolute path")
        size = self.varying(raw["size_bytes"], f"{key}.size_bytes", self.integer)
        used = self.varying(raw["used_bytes"], f"{key}.used_bytes", self.integer)
        return MountSpec(
            **texts, size_bytes=size, used_bytes=used,
            read_bytes_per_s=self.optional(raw, key, "read_bytes_per_s", self.integer) or 0,
            write_bytes_per_s=self.optional(raw, key, "write_bytes_per_s", self.integer) or 0,
            responsive=True if "responsive" not in raw
            else self.optional(raw, key, "responsive", self.boolean),
        )
