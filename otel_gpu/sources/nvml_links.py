"""The GPU's links, read for ``NvmlSource``: PCIe bytes (the driver's counters, else the
sampled rate integrated over time) and replays, and each active NVLink's data and error
counters."""

from __future__ import annotations

from typing import Any

from otel_gpu.snapshot import NvLink
from otel_gpu.sources.libnvml import (
    ABSENT,
    EXPECTED,
    PERMANENT_ERRORS,
    Caller,
    field_number,
    present,
)

# NvLink field -> (nvmlNvLinkErrorCounter_t constant, the per-link field-value id prefix that
# older boards answer instead; nvml.h).
_NVLINK_COUNTERS = {
    "crc_flit_errors": ("NVML_NVLINK_ERROR_DL_CRC_FLIT",
                        "NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_L"),
    "crc_data_errors": ("NVML_NVLINK_ERROR_DL_CRC_DATA",
                        "NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_L"),
    "replay_errors": ("NVML_NVLINK_ERROR_DL_REPLAY", "NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_L"),
    "recovery_errors": ("NVML_NVLINK_ERROR_DL_RECOVERY",
                        "NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_L"),
}


class LinkReader:
    """``NvmlSource``'s PCIe and NVLink reads; they use its ``_nvml`` and ``_error_names``."""

    _nvml: Any
    _error_names: dict[int, str]

    def _pcie_counters(
        self, call: Caller, handle: Any, state: Any, values: dict[str, Any]
    ) -> bool:
        """The driver's PCIe byte counters (field values), where it has them. True when this GPU
        uses them (a failed read leaves the cycle's values absent), False for the sampled rate."""
        nvml = self._nvml
        fields = [getattr(nvml, "NVML_FI_DEV_PCIE_COUNT_TX_BYTES", None),
                  getattr(nvml, "NVML_FI_DEV_PCIE_COUNT_RX_BYTES", None)]
        if state.pcie_counters is False or None in fields:
            return False
        read = call("nvmlDeviceGetFieldValues", handle, fields)
        failure: str | None = None
        if not present(read):
            failure = call.last_error
        elif len(read) < 2:
            failure = "Malformed"
        else:
            for value in read[:2]:
                if value.nvmlReturn != nvml.NVML_SUCCESS:
                    failure = self._error_names.get(value.nvmlReturn, "UNKNOWN")
                    if failure not in PERMANENT_ERRORS:
                        call.record("nvmlDeviceGetFieldValues(PCIE_COUNT)", value.nvmlReturn)
                    break
        if failure is None:
            state.pcie_counters = True
            values["pcie_tx_bytes"] = int(field_number(nvml, read[0]))
            values["pcie_rx_bytes"] = int(field_number(nvml, read[1]))
            return True
        if failure in PERMANENT_ERRORS or failure == "INVALID_ARGUMENT":
            # Older drivers and boards: the sampled rate, and the counters are not asked again.
            state.pcie_counters = False
            return False
        # A transient failure: the counters are cumulative, so the next read has these bytes too.
        return state.pcie_counters is True

    def _pcie(
        self, call: Caller, handle: Any, state: Any, now: float, values: dict[str, Any]
    ) -> None:
        if self._pcie_counters(call, handle, state, values):
            return
        # NVML's rate is KB/s over a 20 ms window (nvml.h), and each call blocks for that
        # window; hw.gpu.io is a byte counter, so the rate is integrated over the time since the
        # last successful read of each direction: a failed read leaves no interval uncounted.
        nvml = self._nvml
        for direction, kind in (("tx", nvml.NVML_PCIE_UTIL_TX_BYTES),
                                ("rx", nvml.NVML_PCIE_UTIL_RX_BYTES)):
            rate = call("nvmlDeviceGetPcieThroughput", handle, kind)
            if not present(rate):
                continue
            since = state.pcie_sampled_at.get(direction)
            if since is not None:
                state.pcie_bytes[direction] += rate * 1024.0 * max(now - since, 0.0)
            state.pcie_sampled_at[direction] = now
            values[f"pcie_{direction}_bytes"] = int(state.pcie_bytes[direction])

    # -- link health -------------------------------------------------------------------------

    def _link_health(self, call: Caller, handle: Any, values: dict[str, Any]) -> None:
        """The PCIe replay counter and, per active NVLink, its data and error counters. A link
        that answers NOT_SUPPORTED (a board without it) is asked again only after
        ``CAPABILITY_RECHECK_S``; INVALID_ARGUMENT means the device has no more links."""
        nvml = self._nvml
        replays = call("nvmlDeviceGetPcieReplayCounter", handle)
        if present(replays):
            values["pcie_replays"] = int(replays)
        links = []
        enabled = getattr(nvml, "NVML_FEATURE_ENABLED", 1)
        for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
            state = call("nvmlDeviceGetNvLinkState", handle, link,
                         expected=("INVALID_ARGUMENT",))
            if state is EXPECTED:
                break
            if present(state) and state == enabled:
                links.append(self._nvlink(call, handle, link))
        if links:
            values["nvlinks"] = tuple(links)

    def _nvlink(self, call: Caller, handle: Any, link: int) -> NvLink:
        nvml = self._nvml
        counts: dict[str, int] = {}
        fallback: list[tuple[str, int]] = []
        for key, (counter, field_prefix) in _NVLINK_COUNTERS.items():
            value = call("nvmlDeviceGetNvLinkErrorCounter", handle, link, getattr(nvml, counter))
            if present(value):
                counts[key] = int(value)
            elif (field_id := getattr(nvml, f"{field_prefix}{link}", None)) is not None:
                fallback.append((key, field_id))
        requested = [(getattr(nvml, "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX", None), link),
                     (getattr(nvml, "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX", None), link)]
        names = ["tx_bytes", "rx_bytes"]
        requested += [(field_id, 0) for _, field_id in fallback]
        names += [key for key, _ in fallback]
        wanted = [(n, r) for n, r in zip(names, requested, strict=True) if r[0] is not None]
        read = call("nvmlDeviceGetFieldValues", handle, [r for _, r in wanted]) if wanted \
            else ABSENT
        if present(read):
            for (name, _), value in zip(wanted, read, strict=False):
                if value.nvmlReturn != nvml.NVML_SUCCESS:
                    continue
                number = int(field_number(nvml, value))
                # The throughput fields count KiB (nvml.h); the error fields count errors.
                counts[name] = number * 1024 if name.endswith("_bytes") else number
        return NvLink(link=link, **counts)
