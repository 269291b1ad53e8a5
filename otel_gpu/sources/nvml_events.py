"""Xid events, read for ``NvmlSource``: each GPU registered once on one event set (a transient
failure is tried again next cycle), and the set drained each cycle, each event matched to its GPU
by device handle."""

from __future__ import annotations

from typing import Any

from otel_gpu.snapshot import SourceError
from otel_gpu.sources.libnvml import (
    Caller,
    GpuLost,
    handle_key,
    present,
)

_MAX_EVENTS_PER_CYCLE = 1000


class XidEventReader:
    """``NvmlSource``'s event reads; they use its ``_nvml``, ``_error_names``, ``_state`` (to
    skip lost GPUs), ``_event_set``, ``_registered`` and ``_handle_to_index``."""

    _nvml: Any
    _error_names: dict[int, str]
    _state: dict[int, Any]
    _event_set: Any
    _registered: set[int]
    _handle_to_index: dict[int, int]

    def _register_events(self, count: int, errors: list[SourceError]) -> None:
        """Register each GPU not yet registered for Xid events; a transient failure (of the event
        set, a handle or the registration) is tried again next cycle."""
        nvml = self._nvml
        if self._event_set is False or (self._event_set and len(self._registered) >= count):
            return  # no events on this driver, or every GPU settled
        call = Caller(nvml, errors, self._error_names, None)
        if self._event_set is None:
            event_set = call("nvmlEventSetCreate")
            if not present(event_set):
                if call.settled(event_set):
                    self._event_set = False  # a driver without events
                return
            self._event_set = event_set
        for index in range(count):
            state = self._state.get(index)
            if index in self._registered or (state is not None and state.lost):
                continue  # a lost GPU is registered again once it answers
            gpu_call = call.for_device(f"gpu{index}")
            try:
                handle = gpu_call("nvmlDeviceGetHandleByIndex", index)
                if not present(handle):
                    continue
                self._handle_to_index[handle_key(handle)] = index
                done = gpu_call(
                    "nvmlDeviceRegisterEvents",
                    handle,
                    nvml.nvmlEventTypeXidCriticalError,
                    self._event_set,
                )
                if gpu_call.settled(done):
                    self._registered.add(index)
            except GpuLost:
                continue

    def _drain_events(self, errors: list[SourceError]) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        if not self._event_set:
            return found
        call = Caller(self._nvml, errors, self._error_names, None)
        for _ in range(_MAX_EVENTS_PER_CYCLE):
            try:
                data = call("nvmlEventSetWait_v2", self._event_set, 0, expected=("TIMEOUT",))
            except GpuLost:
                break  # a GPU fell off the bus: it answers the same until reset; next cycle
            if not present(data):
                break
            if data.eventType != self._nvml.nvmlEventTypeXidCriticalError:
                continue
            # Matched by handle: on a GPU that is being lost, asking for its UUID would fail.
            index = self._handle_to_index.get(handle_key(data.device))
            if index is not None:
                found.setdefault(index, []).append(int(data.eventData))
        return found
