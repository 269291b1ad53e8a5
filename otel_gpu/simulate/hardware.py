"""The hardware catalog of the simulated server: GPU models and their MIG GPU-instance profiles.

Sources for the figures (see the project's research notes on GPU anchors, section 4):

- MIG profile ids, memory sizes and SM counts: ``nvidia-smi mig -lgip`` captures published for
  A100-SXM4-40GB, A100-SXM4-80GB and H100-SXM5-80GB; profile names and the A100-SXM4-80GB naming
  rule from the NVIDIA MIG User Guide ("Supported MIG Profiles"); instance counts per profile from
  NVIDIA mig-parted's default configuration; placement starts from the ``-lgip``/placement
  captures (A100 and H100 both have 7 compute slices and 8 memory slices).
- H200-141GB: instance counts from mig-parted; memory sizes from go-nvml's ``dgxh200`` mock
  (``MemorySizeMB``); SM counts from a public test fixture for 1g, 2g and 7g, and by analogy with
  H100 for 1g.35gb, 3g.71gb and 4g.71gb (not verified on hardware).
- NVLinks per GPU: the A100 datasheet (12 third-generation links, 600 GB/s) and the H100 and
  H200 datasheets (18 fourth-generation links, 900 GB/s), SXM boards.
- Power limits, idle power, idle temperature and maximum SM and memory clocks: NVIDIA Mokka's
  ``nvml-mock`` profiles for A100 and H100 (mock profiles, not spec sheets); H200 reuses the H100
  figures where no source gives its own. Video clocks and idle clocks other than the A100's SM
  clock are approximate.
- DGX Display: the DGX Station A100 User Guide lists a 4 GB display adapter beside its four
  A100-SXM4-80GB GPUs, and ``nvidia-smi`` on that system names it "DGX Display". Its other
  figures (SMs, clocks, power) are published nowhere we could find: the values below are a
  stand-in for a small non-MIG GPU, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import pynvml

MIB = 1024 * 1024


@dataclass(frozen=True)
class MigProfile:
    """One GPU-instance profile, as ``nvidia-smi mig -lgip`` lists it."""

    name: str  # e.g. 3g.20gb
    profile_id: int  # the id nvidia-smi prints and nvmlGpuInstanceGetInfo returns
    compute_slices: int
    memory_slices: int  # the placement size
    memory_mib: int
    sm_count: int
    max_instances: int
    starts: tuple[int, ...]  # allowed placement starts, in memory slices

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB


@dataclass(frozen=True)
class Clocks:
    """Clock frequencies in MHz."""

    graphics: int
    sm: int
    memory: int
    video: int


@dataclass(frozen=True)
class GpuModel:
    key: str  # the catalog name used in scenario files, e.g. A100-SXM4-40GB
    nvml_name: str  # what nvmlDeviceGetName returns
    architecture: int  # pynvml NVML_DEVICE_ARCH_*
    memory_total_bytes: int
    sm_count: int  # the whole GPU's SMs, as nvmlDeviceGetAttributes reports them
    power_limit_watts: float
    idle_power_watts: float
    idle_temperature_celsius: float
    max_clocks: Clocks
    idle_clocks: Clocks
    has_fan: bool
    gpm_supported: bool
    mig_profiles: tuple[MigProfile, ...]
    compute_slices: int = 7
    memory_slices: int = 8
    nvlinks: int = 12  # NVLinks per GPU: 12 on A100 (NVLink 3), 18 on H100 and H200 (NVLink 4)

    @property
    def architecture_name(self) -> str:
        return "Hopper" if self.architecture == pynvml.NVML_DEVICE_ARCH_HOPPER else "Ampere"

    def profile(self, name: str) -> MigProfile | None:
        for profile in self.mig_profiles:
            if profile.name == name:
                return profile
        return None


_ALL_STARTS = (0, 1, 2, 3, 4, 5, 6)
_EVEN_STARTS = (0, 2, 4, 6)


def _profiles(
    one: str,
    one_me: str,
    one_double: str,
    two: str,
    three: str,
    four: str,
    seven: str,
    memory_mib: tuple[int, int, int, int, int, int, int],
    sm_counts: tuple[int, int, int, int, int, int, int],
) -> tuple[MigProfile, ...]:
    """The seven GPU-instance profiles shared by A100 and H100-class GPUs, in -lgip order."""
    shapes = (
        # name, id, compute slices, memory slices, max, starts
        (one, 19, 1, 1, 7, _ALL_STARTS),
        (one_me, 20, 1, 1, 1, _ALL_STARTS),
        (one_double, 15, 1, 2, 4, _EVEN_STARTS),
        (two, 14, 2, 2, 3, (0, 2, 4)),
        (three, 9, 3, 4, 2, (0, 4)),
        (four, 5, 4, 4, 1, (0,)),
        (seven, 0, 7, 8, 1, (0,)),
    )
    return tuple(
        MigProfile(name, pid, compute, memory, mib, sms, count, starts)
        for (name, pid, compute, memory, count, starts), mib, sms in zip(
            shapes, memory_mib, sm_counts, strict=True
        )
    )


_AMPERE = pynvml.NVML_DEVICE_ARCH_AMPERE
_HOPPER = pynvml.NVML_DEVICE_ARCH_HOPPER

A100_SXM4_40GB = GpuModel(
    key="A100-SXM4-40GB",
    nvml_name="NVIDIA A100-SXM4-40GB",
    architecture=_AMPERE,
    memory_total_bytes=40960 * MIB,
    sm_count=108,
    power_limit_watts=400.0,
    idle_power_watts=72.0,
    idle_temperature_celsius=33.0,
    max_clocks=Clocks(graphics=1410, sm=1410, memory=1215, video=1290),
    idle_clocks=Clocks(graphics=210, sm=210, memory=1215, video=585),
    has_fan=False,
    gpm_supported=False,
    mig_profiles=_profiles(
        "1g.5gb",
        "1g.5gb+me",
        "1g.10gb",
        "2g.10gb",
        "3g.20gb",
        "4g.20gb",
        "7g.40gb",
        memory_mib=(4864, 4864, 9984, 9984, 20096, 20096, 40320),
        sm_counts=(14, 14, 14, 28, 42, 56, 98),
    ),
)

A100_SXM4_80GB = GpuModel(
    key="A100-SXM4-80GB",
    nvml_name="NVIDIA A100-SXM4-80GB",
    architecture=_AMPERE,
    memory_total_bytes=81920 * MIB,
    sm_count=108,
    power_limit_watts=400.0,
    idle_power_watts=72.0,
    idle_temperature_celsius=33.0,
    max_clocks=Clocks(graphics=1410, sm=1410, memory=1593, video=1290),
    idle_clocks=Clocks(graphics=210, sm=210, memory=1593, video=585),
    has_fan=False,
    gpm_supported=False,
    mig_profiles=_profiles(
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
        memory_mib=(9728, 9728, 19968, 19968, 40192, 40192, 80896),
        sm_counts=(14, 14, 14, 28, 42, 56, 98),
    ),
)

H100_SXM5_80GB = GpuModel(
    key="H100-SXM5-80GB",
    nvml_name="NVIDIA H100 80GB HBM3",
    architecture=_HOPPER,
    memory_total_bytes=81559 * MIB,
    sm_count=132,
    power_limit_watts=700.0,
    idle_power_watts=95.0,
    idle_temperature_celsius=30.0,
    max_clocks=Clocks(graphics=1980, sm=1980, memory=1593, video=1755),
    idle_clocks=Clocks(graphics=345, sm=345, memory=1593, video=765),
    nvlinks=18,
    has_fan=False,
    gpm_supported=True,
    mig_profiles=_profiles(
        "1g.10gb",
        "1g.10gb+me",
        "1g.20gb",
        "2g.20gb",
        "3g.40gb",
        "4g.40gb",
        "7g.80gb",
        memory_mib=(9984, 9984, 20096, 20096, 40448, 40448, 81152),
        sm_counts=(16, 16, 26, 32, 60, 64, 132),
    ),
)

H200_141GB = GpuModel(
    key="H200-141GB",
    nvml_name="NVIDIA H200",
    architecture=_HOPPER,
    memory_total_bytes=144384 * MIB,
    sm_count=132,
    power_limit_watts=700.0,
    idle_power_watts=95.0,
    idle_temperature_celsius=30.0,
    max_clocks=Clocks(graphics=1980, sm=1980, memory=1593, video=1755),
    idle_clocks=Clocks(graphics=345, sm=345, memory=1593, video=765),
    nvlinks=18,
    has_fan=False,
    gpm_supported=True,
    mig_profiles=_profiles(
        "1g.18gb",
        "1g.18gb+me",
        "1g.35gb",
        "2g.35gb",
        "3g.71gb",
        "4g.71gb",
        "7g.141gb",
        memory_mib=(18432, 18432, 35840, 35840, 72704, 72704, 144384),
        sm_counts=(16, 16, 26, 32, 60, 64, 132),
    ),
)

DGX_DISPLAY = GpuModel(
    key="DGX-Display",
    nvml_name="DGX Display",
    architecture=_AMPERE,
    memory_total_bytes=4096 * MIB,
    sm_count=16,
    power_limit_watts=50.0,
    idle_power_watts=8.0,
    idle_temperature_celsius=35.0,
    max_clocks=Clocks(graphics=1500, sm=1500, memory=5001, video=1350),
    idle_clocks=Clocks(graphics=300, sm=300, memory=405, video=540),
    has_fan=True,
    gpm_supported=False,
    mig_profiles=(),
    nvlinks=0,
)

MODELS: dict[str, GpuModel] = {
    model.key: model
    for model in (A100_SXM4_40GB, A100_SXM4_80GB, H100_SXM5_80GB, H200_141GB, DGX_DISPLAY)
}
ALIASES: dict[str, str] = {"H200": "H200-141GB"}


def find_model(name: str) -> GpuModel | None:
    """The catalog model called ``name`` (or one of its aliases), or None."""
    return MODELS.get(ALIASES.get(name, name))


def gpu_instance_id(profile: MigProfile, start: int) -> int:
    """The GPU-instance id the simulated driver gives an instance of ``profile`` at ``start``.

    Real drivers do not number GPU instances in creation order (an A100 that created 4g, 2g and
    1g instances reported ids 2, 3 and 9). The simulator numbers them by their node in the binary
    tree of memory slices: the whole GPU is 0, halves 1-2, quarters 3-6, eighths 7-14. The id is
    therefore stable for a placement, unique within a valid layout, and not sequential.
    """
    level_first = {8: 0, 4: 1, 2: 3, 1: 7}[profile.memory_slices]
    return level_first + start // profile.memory_slices
