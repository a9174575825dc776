"""What memory a worker has: /proc/meminfo, cgroup v1/v2 limits, nvidia-smi, the per-worker share."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rlhfctl.training.memory_probe import (
    RAY_PROCESSES_BYTES,
    available_ram,
    cgroup_headroom,
    format_bytes,
    nvidia_smi_total_bytes,
    probe_this_machine,
    own_resident_bytes,
    read_meminfo,
)

GiB, MiB = 1024**3, 1024**2


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="ascii")
    return path


def test_meminfo_fields_in_bytes(tmp_path):
    meminfo = _write(tmp_path / "meminfo", "MemTotal:       24684084 kB\nMemAvailable:   20971520 kB\nHugePages_Total:"
                                           "       0\n")
    assert read_meminfo(meminfo) == {"MemTotal": 24684084 * 1024, "MemAvailable": 20 * GiB, "HugePages_Total": 0}
    assert read_meminfo(tmp_path / "absent") == {}


def test_cgroup_v2_headroom_is_limit_minus_usage_plus_reclaimable_cache(tmp_path):
    proc = _write(tmp_path / "proc_cgroup", "0::/job/step\n")
    root = tmp_path / "cgroup"
    _write(root / "job" / "step" / "memory.max", "max\n")  # no limit at the leaf ...
    _write(root / "job" / "step" / "memory.current", "100\n")
    _write(root / "job" / "memory.max", f"{4 * GiB}\n")  # ... but its parent has one
    _write(root / "job" / "memory.current", f"{3 * GiB}\n")
    _write(root / "job" / "memory.stat", f"anon 1\ninactive_file {512 * MiB}\n")
    headroom, source = cgroup_headroom(proc, root)
    assert headroom == GiB + 512 * MiB
    assert "job/memory.max" in source


def test_cgroup_v1_limit_and_no_limit(tmp_path):
    proc = _write(tmp_path / "proc_cgroup", "4:memory:/docker/abc\n3:cpu:/\n")
    root = tmp_path / "cgroup"
    _write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", f"{8 * GiB}\n")
    _write(root / "memory" / "docker" / "abc" / "memory.usage_in_bytes", f"{2 * GiB}\n")
    _write(root / "memory" / "docker" / "abc" / "memory.stat", "total_inactive_file 0\n")
    assert cgroup_headroom(proc, root)[0] == 6 * GiB
    _write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_headroom(proc, root) is None


def test_available_ram_is_the_lower_of_meminfo_and_the_cgroup(tmp_path):
    meminfo = _write(tmp_path / "meminfo", f"MemAvailable: {20 * 1024 * 1024} kB\n")
    proc = _write(tmp_path / "proc_cgroup", "0::/\n")
    root = tmp_path / "cgroup"
    assert available_ram(meminfo, proc, root) == (20 * GiB, f"MemAvailable 20.0 GiB in {meminfo}")
    _write(root / "memory.max", f"{6 * GiB}\n")
    _write(root / "memory.current", f"{2 * GiB}\n")
    available, source = available_ram(meminfo, proc, root)
    assert available == 4 * GiB and "cgroup limit" in source


def test_nvidia_smi_reports_the_smallest_gpu(tmp_path):
    def fake_run(command, **kwargs):
        assert command[0] == "nvidia-smi"
        return subprocess.CompletedProcess(command, 0, stdout="81559\n40960\n", stderr="")

    assert nvidia_smi_total_bytes(run=fake_run) == 40960 * MiB

    def failing_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 9, stdout="", stderr="no devices")

    assert nvidia_smi_total_bytes(run=failing_run) is None


def test_a_workers_share_of_this_machine():
    ram = lambda: (10 * GiB, "MemAvailable 10.0 GiB")  # noqa: E731
    shared = probe_this_machine(workers=2, use_gpu=False, gpus_per_worker=0, ray_processes=True, ram=ram)
    assert shared.bytes_per_worker == (10 * GiB - RAY_PROCESSES_BYTES) // 2 and shared.device == "cpu"
    assert "shared by 2 workers" in shared.source and "Ray's processes" in shared.source
    gpu = probe_this_machine(workers=4, use_gpu=True, gpus_per_worker=0.5, ray_processes=True,
                             gpu_total=lambda: 80 * GiB, ram=ram)
    assert gpu.bytes_per_worker == 40 * GiB and gpu.device == "cuda"
    assert probe_this_machine(workers=1, use_gpu=True, gpus_per_worker=1, ray_processes=False,
                              gpu_total=lambda: None, ram=ram) is None


def test_the_driver_gives_its_own_memory_back_when_it_is_the_worker():
    ram = lambda: (3 * GiB, "MemAvailable 3.0 GiB")  # noqa: E731
    local = probe_this_machine(workers=1, use_gpu=False, gpus_per_worker=0, ray_processes=False, in_driver=True,
                               ram=ram, own_bytes=lambda: GiB)
    assert local.bytes_per_worker == 4 * GiB


@pytest.mark.parametrize(("count", "text"), [(3 * GiB / 2, "1.5 GiB"), (300 * MiB, "300 MiB"), (0, "0 MiB"),
                                           (1000, "<1 MiB")])
def test_format_bytes(count, text):
    assert format_bytes(count) == text


def test_own_resident_bytes_reads_statm(tmp_path):
    import os

    statm = _write(tmp_path / "statm", "1000 250 10 1 0 5 0\n")
    assert own_resident_bytes(statm) == 250 * os.sysconf("SC_PAGE_SIZE")
    assert own_resident_bytes() > 0
