"""A scenario's GPUs, read and checked: models, identities, clocks, counters, faults, MIG
layouts and their processes."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from otel_gpu.simulate.hardware import MODELS, GpuModel, find_model, gpu_instance_id
from otel_gpu.simulate.scenario_checks import (
    CLOCK_KEYS,
    ECC_KEYS,
    FAULT_KEYS,
    GPM_KEYS,
    GPU_KEYS,
    INSTANCE_KEYS,
    LAYOUT_KEYS,
    MAX_PID,
    MAX_UID,
    MAX_UINT64,
    MIG_KEYS,
    PROCESS_KEYS,
    REMAPPED_KEYS,
    XID_KEYS,
    Checks,
    join_key,
    kind_of,
)
from otel_gpu.simulate.spec import (
    FAULTABLE_CALLS,
    NVML_ERROR_NAMES,
    ClockValues,
    EccCounts,
    Fault,
    GpmValues,
    GpuSpec,
    MigInstanceSpec,
    MigLayout,
    MigSpec,
    PerCycle,
    ProcessSpec,
    RemappedRows,
    Varying,
    XidEvent,
)
from otel_gpu.sources.libnvml import CLOCK_EVENT_REASONS

_UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "https://github.com/otel-gpu/simulate")


def derive_gpu_uuid(scenario_name: str, index: int) -> str:
    return f"GPU-{uuidlib.uuid5(_UUID_NAMESPACE, f'{scenario_name}/gpu{index}')}"


def derive_mig_uuid(scenario_name: str, gpu_index: int, generation: int, position: int) -> str:
    name = f"{scenario_name}/gpu{gpu_index}/layout{generation}/mig{position}"
    return f"MIG-{uuidlib.uuid5(_UUID_NAMESPACE, name)}"


def _derive_serial(gpu_uuid: str) -> str:
    return str(1_320_000_000_000 + uuidlib.UUID(gpu_uuid[4:]).int % 10**10)



class GpuChecks(Checks):
    """The GPU sections of a scenario; ``name`` is the scenario's, for derived UUIDs."""

    name: str

    def gpu(self, value: Any, key: str, index: int) -> GpuSpec:
        raw = self.mapping(value, key, GPU_KEYS, required=("model",))
        model_name = self.string(raw["model"], f"{key}.model")
        model = find_model(model_name)
        if model is None:
            known = ", ".join(MODELS)
            raise self.error(f"{key}.model", f"unknown model '{model_name}' (known: {known})")
        gpu_uuid = (
            self.uuid_string(raw["uuid"], f"{key}.uuid", "GPU-")
            if "uuid" in raw
            else derive_gpu_uuid(self.name, index)
        )
        serial = (
            self.string(raw["serial"], f"{key}.serial")
            if "serial" in raw
            else _derive_serial(gpu_uuid)
        )
        total = model.memory_total_bytes
        if "gpm" in raw:
            self.check_gpm_allowed(model, f"{key}.gpm")
        mig = self.mig(raw["mig"], f"{key}.mig", model, index) if "mig" in raw else None
        initial = mig.layouts[0] if mig else None
        processes = self.processes(raw.get("processes", []), f"{key}.processes", initial)
        if mig:
            first = mig.layouts[0]
            mig = MigSpec((MigLayout(0, 0, first.instances, processes), *mig.layouts[1:]))
        power_limit = (
            self.number(raw["power_limit_watts"], f"{key}.power_limit_watts", minimum=1.0)
            if "power_limit_watts" in raw
            else None
        )
        return GpuSpec(
            index=index,
            model=model,
            uuid=gpu_uuid,
            serial=serial,
            utilization=self.optional(raw, key, "utilization", self.ratio),
            memory_utilization=self.optional(raw, key, "memory_utilization", self.ratio),
            memory_used_bytes=self.optional(
                raw, key, "memory_used_bytes", self.bytes_within(total)
            ),
            power_watts=self.optional(raw, key, "power_watts", self.number),
            power_limit_watts=power_limit,
            temperature_celsius=self.optional(raw, key, "temperature_celsius", self.number),
            memory_temperature_celsius=self.optional(
                raw, key, "memory_temperature_celsius", self.number
            ),
            clocks_mhz=self.clocks(raw.get("clocks_mhz", {}), f"{key}.clocks_mhz"),
            clocks_event_reasons=(
                self.reasons(raw["clocks_event_reasons"], f"{key}.clocks_event_reasons")
                if "clocks_event_reasons" in raw
                else None
            ),
            encoder_utilization=self.optional(raw, key, "encoder_utilization", self.ratio),
            decoder_utilization=self.optional(raw, key, "decoder_utilization", self.ratio),
            ecc_errors=self.ecc(raw.get("ecc_errors", {}), f"{key}.ecc_errors"),
            remapped_rows=self.remapped(raw.get("remapped_rows", {}), f"{key}.remapped_rows"),
            pcie_tx_bytes_per_s=self.optional(raw, key, "pcie_tx_bytes_per_s", self.number),
            pcie_rx_bytes_per_s=self.optional(raw, key, "pcie_rx_bytes_per_s", self.number),
            mig_pending=self.optional(raw, key, "mig_pending", self.boolean) or False,
            xid_events=self.xid_events(raw.get("xid_events", []), f"{key}.xid_events", mig),
            faults=self.faults(raw.get("faults", []), f"{key}.faults"),
            mig=mig,
            gpm=self.gpm(raw["gpm"], f"{key}.gpm") if "gpm" in raw else None,
            dcgm=self.dcgm_values(raw["dcgm"], f"{key}.dcgm") if "dcgm" in raw else None,
            nvlinks=self.nvlinks(raw.get("nvlinks", []), f"{key}.nvlinks", model),
            pcie_replays=self.optional(raw, key, "pcie_replays", self.integer) or 0,
            processes=processes,
        )

    def uuid_string(self, value: Any, key: str, prefix: str) -> str:
        text = self.string(value, key)
        try:
            if not text.startswith(prefix):
                raise ValueError
            uuidlib.UUID(text[len(prefix) :])
        except ValueError:
            raise self.error(key, f"expected '{prefix}' followed by a UUID, got '{text}'") from None
        return text

    def bytes_within(self, total: int) -> Callable[[Any, str], int]:
        def check(value: Any, key: str) -> int:
            count = self.integer(value, key)
            if count > total:
                raise self.error(key, f"{count} bytes is more than the device's {total}")
            return count

        return check

    def clocks(self, value: Any, key: str) -> ClockValues:
        raw = self.mapping(value, key, CLOCK_KEYS)
        return ClockValues(**{name: self.optional(raw, key, name, self.mhz) for name in raw})

    def mhz(self, value: Any, key: str) -> int:
        return self.integer(value, key, minimum=1)

    def reasons(self, value: Any, key: str) -> Varying:
        items = self.list_of(value, key)
        if items and all(isinstance(item, list) for item in items):
            return PerCycle(self.reason_names(item, f"{key}[{k}]") for k, item in enumerate(items))
        return self.reason_names(items, key)

    def reason_names(self, items: list[Any], key: str) -> tuple[str, ...]:
        for k, item in enumerate(items):
            if not isinstance(item, str):
                raise self.error(
                    f"{key}[{k}]", f"expected a clock event reason name, got {kind_of(item)}"
                )
            if item not in CLOCK_EVENT_REASONS:
                known = ", ".join(CLOCK_EVENT_REASONS)
                raise self.error(f"{key}[{k}]", f"unknown clock event reason {item!r} ({known})")
        return tuple(items)

    def ecc(self, value: Any, key: str) -> EccCounts:
        raw = self.mapping(value, key, ECC_KEYS)
        return EccCounts(
            **{name: self.varying(raw[name], join_key(key, name),
                                  lambda v, k: self.integer(v, k, maximum=MAX_UINT64))
               for name in raw}
        )

    def remapped(self, value: Any, key: str) -> RemappedRows:
        raw = self.mapping(value, key, REMAPPED_KEYS)
        checks = {
            "corrected": self.integer,
            "uncorrected": self.integer,
            "pending": self.boolean,
            "failed": self.boolean,
        }
        return RemappedRows(
            **{name: self.varying(raw[name], join_key(key, name), checks[name]) for name in raw}
        )

    def check_gpm_allowed(self, model: GpuModel, key: str) -> None:
        if not model.gpm_supported:
            raise self.error(
                key, f"GPM needs a Hopper or later GPU; {model.key} is {model.architecture_name}"
            )

    def gpm(self, value: Any, key: str) -> GpmValues:
        raw = self.mapping(value, key, GPM_KEYS)
        return GpmValues(**{name: self.optional(raw, key, name, self.ratio) for name in raw})

    def xid_events(self, value: Any, key: str, mig: MigSpec | None) -> tuple[XidEvent, ...]:
        events = []
        for i, item in enumerate(self.list_of(value, key)):
            item_key = f"{key}[{i}]"
            raw = self.mapping(item, item_key, XID_KEYS, ("cycle", "code"))
            cycle = self.integer(raw["cycle"], f"{item_key}.cycle")
            code = self.integer(raw["code"], f"{item_key}.code")
            instance = None
            if "mig_instance" in raw:
                instance_key = f"{item_key}.mig_instance"
                instance = self.integer(raw["mig_instance"], instance_key)
                if mig is None:
                    raise self.error(instance_key, "the GPU has no MIG layout")
                count = len(mig.layout_at(cycle).instances)
                if instance >= count:
                    raise self.error(
                        instance_key, f"out of range: the layout at cycle {cycle} has {count}"
                    )
            events.append(XidEvent(cycle, code, instance))
        return tuple(events)

    def faults(
        self, value: Any, key: str, calls: frozenset[str] = FAULTABLE_CALLS
    ) -> tuple[Fault, ...]:
        faults = []
        for i, item in enumerate(self.list_of(value, key)):
            item_key = f"{key}[{i}]"
            raw = self.mapping(item, item_key, FAULT_KEYS, ("call", "error"))
            call = self.string(raw["call"], f"{item_key}.call")
            if call != "*" and call not in calls:
                kind = "a device" if calls is FAULTABLE_CALLS else "a driver-wide"
                raise self.error(
                    f"{item_key}.call", f"'{call}' is not {kind} call of the simulated driver"
                )
            error = self.string(raw["error"], f"{item_key}.error").removeprefix("NVML_ERROR_")
            if error not in NVML_ERROR_NAMES:
                raise self.error(f"{item_key}.error", f"unknown NVML error '{raw['error']}'")
            cycles = None
            if "cycles" in raw:
                cycles = self.cycle_list(raw["cycles"], f"{item_key}.cycles")
            faults.append(Fault(call, error, cycles))
        # A lost GPU answers nothing else, so its faults come first.
        return tuple(sorted(faults, key=lambda f: f.error != "GPU_IS_LOST"))

    def cycle_list(self, value: Any, key: str) -> tuple[int, ...]:
        if not isinstance(value, list):
            return (self.integer(value, key),)
        if not value:
            raise self.error(key, "an empty list; leave the key out for every cycle")
        return tuple(self.integer(c, f"{key}[{k}]") for k, c in enumerate(value))

    # -- MIG --

    def mig(self, value: Any, key: str, model: GpuModel, gpu_index: int) -> MigSpec:
        raw = self.mapping(value, key, MIG_KEYS, required=("instances",))
        layouts = [
            MigLayout(
                0, 0, self.instances(raw["instances"], f"{key}.instances", model, gpu_index, 0), ()
            )
        ]
        previous_cycle = 0
        for g, item in enumerate(self.list_of(raw.get("reconfigure", []), f"{key}.reconfigure"), 1):
            item_key = f"{key}.reconfigure[{g - 1}]"
            entry = self.mapping(item, item_key, LAYOUT_KEYS, ("cycle", "instances"))
            cycle = self.integer(entry["cycle"], f"{item_key}.cycle", minimum=1)
            if cycle <= previous_cycle:
                raise self.error(
                    f"{item_key}.cycle",
                    f"must come after the previous layout's cycle {previous_cycle}",
                )
            previous_cycle = cycle
            instances = self.instances(
                entry["instances"], f"{item_key}.instances", model, gpu_index, g
            )
            layout = MigLayout(g, cycle, instances, ())
            processes = self.processes(entry.get("processes", []), f"{item_key}.processes", layout)
            layouts.append(MigLayout(g, cycle, instances, processes))
        return MigSpec(tuple(layouts))

    def instances(
        self, value: Any, key: str, model: GpuModel, gpu_index: int, generation: int
    ) -> tuple[MigInstanceSpec, ...]:
        placed: list[MigInstanceSpec] = []
        compute = 0
        for j, item in enumerate(self.list_of(value, key)):
            item_key = f"{key}[{j}]"
            raw = self.mapping(item, item_key, INSTANCE_KEYS, required=("profile",))
            name = self.string(raw["profile"], f"{item_key}.profile")
            profile = model.profile(name)
            if profile is None:
                offered = ", ".join(p.name for p in model.mig_profiles)
                raise self.error(
                    f"{item_key}.profile",
                    f"{model.key} offers no MIG profile '{name}' (it offers: {offered})",
                )
            if sum(p.profile.name == name for p in placed) >= profile.max_instances:
                raise self.error(
                    f"{item_key}.profile",
                    f"more than {profile.max_instances} instance(s) of {name} on {model.key}",
                )
            compute += profile.compute_slices
            if compute > model.compute_slices:
                raise self.error(
                    f"{item_key}.profile",
                    f"the layout needs {compute} compute slices; {model.key} has "
                    f"{model.compute_slices}",
                )
            if "start" in raw:
                start = self.integer(raw["start"], f"{item_key}.start")
                if start not in profile.starts:
                    allowed = ", ".join(map(str, profile.starts))
                    raise self.error(
                        f"{item_key}.start", f"{name} may start at {allowed}, not {start}"
                    )
                clash = _overlapping(placed, start, profile.memory_slices)
                if clash is not None:
                    raise self.error(
                        f"{item_key}.start",
                        f"placement {start}:{profile.memory_slices} overlaps "
                        f"instances[{clash.index}] ({clash.profile.name} at "
                        f"{clash.start}:{clash.size})",
                    )
            else:
                free = [
                    s
                    for s in profile.starts
                    if _overlapping(placed, s, profile.memory_slices) is None
                ]
                if not free:
                    raise self.error(f"{item_key}.profile", f"no free placement left for {name}")
                start = free[0]
            uuid = (
                self.uuid_string(raw["uuid"], f"{item_key}.uuid", "MIG-")
                if "uuid" in raw
                else derive_mig_uuid(self.name, gpu_index, generation, j)
            )
            if "gpm" in raw:
                self.check_gpm_allowed(model, f"{item_key}.gpm")
            placed.append(
                MigInstanceSpec(
                    index=j,
                    profile=profile,
                    start=start,
                    uuid=uuid,
                    gpu_instance_id=gpu_instance_id(profile, start),
                    memory_used_bytes=self.optional(
                        raw, item_key, "memory_used_bytes", self.bytes_within(profile.memory_bytes)
                    ),
                    gpm=self.gpm(raw["gpm"], f"{item_key}.gpm") if "gpm" in raw else None,
                    dcgm=self.dcgm_values(raw["dcgm"], f"{item_key}.dcgm")
                    if "dcgm" in raw
                    else None,
                )
            )
        return tuple(placed)

    # -- processes --

    def processes(self, value: Any, key: str, layout: MigLayout | None) -> tuple[ProcessSpec, ...]:
        processes = []
        seen: set[int] = set()
        for i, item in enumerate(self.list_of(value, key)):
            process = self.process(item, f"{key}[{i}]", layout)
            if process.pid in seen:
                raise self.error(f"{key}[{i}].pid", f"pid {process.pid} is listed twice")
            seen.add(process.pid)
            processes.append(process)
        return tuple(processes)

    def process(self, value: Any, key: str, layout: MigLayout | None) -> ProcessSpec:
        raw = self.mapping(value, key, PROCESS_KEYS, required=("pid",))
        mig_instance = None
        if layout is not None:
            if "mig_instance" not in raw:
                raise self.error(f"{key}.mig_instance", "required on a MIG-enabled GPU")
            mig_instance = self.integer(raw["mig_instance"], f"{key}.mig_instance")
            if mig_instance >= len(layout.instances):
                raise self.error(
                    f"{key}.mig_instance",
                    f"out of range: the layout has {len(layout.instances)} instance(s)",
                )
        elif "mig_instance" in raw:
            raise self.error(f"{key}.mig_instance", "the GPU has no MIG layout")
        cmdline: tuple[str, ...] = ()
        if "cmdline" in raw:
            cmdline = tuple(
                self.string(arg, f"{key}.cmdline[{k}]")
                for k, arg in enumerate(self.list_of(raw["cmdline"], f"{key}.cmdline"))
            )
        comm = self.string(raw["comm"], f"{key}.comm") if "comm" in raw else "python3"
        return ProcessSpec(
            pid=self.integer(raw["pid"], f"{key}.pid", minimum=1, maximum=MAX_PID),
            uid=self.integer(raw["uid"], f"{key}.uid", maximum=MAX_UID) if "uid" in raw else 0,
            comm=comm,
            cgroup=self.string(raw["cgroup"], f"{key}.cgroup") if "cgroup" in raw else "0::/",
            cmdline=cmdline or (comm,),
            used_memory_bytes=self.optional(raw, key, "used_memory_bytes", self.integer) or 0,
            sm_utilization=self.optional(raw, key, "sm_utilization", self.ratio),
            memory_utilization=self.optional(raw, key, "memory_utilization", self.ratio),
            mig_instance=mig_instance,
            running=True
            if "running" not in raw
            else self.optional(raw, key, "running", self.boolean),
            libraries=tuple(
                self.string(name, f"{key}.libraries[{k}]")
                for k, name in enumerate(self.list_of(raw.get("libraries", []),
                                                      f"{key}.libraries"))
            ),
            environ=self.environ(raw.get("environ", {}), f"{key}.environ"),
        )

    def environ(self, value: Any, key: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {kind_of(value)}")
        found = {}
        for name, text in value.items():
            if not isinstance(name, str) or not name or "=" in name or "\0" in name:
                raise self.error(key, f"{name!r} is not an environment variable name")
            text = self.string(text, f"{key}.{name}")
            if "\0" in text:
                raise self.error(f"{key}.{name}", "a NUL byte ends an environment entry")
            found[name] = text
        return found

    def check_unique_uuids(self, gpus: tuple[GpuSpec, ...]) -> None:
        seen: dict[str, str] = {}
        for gpu in gpus:
            owned = [(f"gpus[{gpu.index}].uuid", gpu.uuid)]
            for layout in gpu.mig.layouts if gpu.mig else ():
                prefix = f"gpus[{gpu.index}].mig" + (
                    "" if layout.generation == 0 else f".reconfigure[{layout.generation - 1}]"
                )
                owned += [(f"{prefix}.instances[{i.index}].uuid", i.uuid) for i in layout.instances]
            for key, value in owned:
                if value in seen:
                    raise self.error(key, f"UUID {value} is also used by {seen[value]}")
                seen[value] = key

    def check_processes_consistent(self, gpus: tuple[GpuSpec, ...]) -> None:
        first: dict[int, tuple[str, ProcessSpec]] = {}
        for gpu in gpus:
            layouts = gpu.mig.layouts if gpu.mig else ()
            prefix = f"gpus[{gpu.index}]"
            groups = [(f"{prefix}.processes", gpu.processes)] + [
                (f"{prefix}.mig.reconfigure[{lay.generation - 1}].processes", lay.processes)
                for lay in layouts[1:]
            ]
            for key, processes in groups:
                for i, p in enumerate(processes):
                    if p.pid not in first:
                        first[p.pid] = (f"{key}[{i}]", p)
                        continue
                    where, q = first[p.pid]
                    if (p.uid, p.comm, p.cgroup) != (q.uid, q.comm, q.cgroup):
                        raise self.error(
                            f"{key}[{i}]",
                            f"pid {p.pid} is also at {where} with another uid, comm or cgroup",
                        )

    # -- containers, pods, host --


def _overlapping(placed: list[MigInstanceSpec], start: int, size: int) -> MigInstanceSpec | None:
    for other in placed:
        if start < other.start + other.size and other.start < start + size:
            return other
    return None


def has_dcgm_values(gpu: GpuSpec) -> bool:
    if gpu.dcgm is not None:
        return True
    layouts = gpu.mig.layouts if gpu.mig else ()
    return any(i.dcgm is not None for layout in layouts for i in layout.instances)


