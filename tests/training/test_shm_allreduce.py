"""The shared-memory gradient average: same gradients as DDP's gloo all-reduce, identical on every rank, and a
clean fallback when the workers cannot share files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfctl.training import shm_allreduce

# Runs as a file (spawned children re-import it): 2 gloo processes, a DDP model averaged by gloo beside the same
# model averaged through shared memory, several small buckets, 4 steps (DDP rebuilds its buckets after the first).
TWO_RANKS = r'''
import json, os, sys
from pathlib import Path
import torch
import torch.distributed as dist
from rlhfctl.training import shm_allreduce


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256),
                               torch.nn.Tanh(), torch.nn.Linear(256, 1))


def run(rank, out_dir, port, shm_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ddp = lambda model: torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.1,
                                                                  gradient_as_bucket_view=True)
    report = {}
    # Workers that cannot see each other's files (as on two nodes): both stay on gloo, nothing left behind.
    apart = Path(out_dir) / f"apart{rank}"
    apart.mkdir()
    report["apart_hook"] = shm_allreduce.attach(ddp(build()), directory=apart) is not None
    report["apart_left"] = sorted(os.listdir(apart))

    reference, shared = ddp(build()), ddp(build())
    averager = shm_allreduce.attach(shared, directory=Path(shm_dir))
    report["hook"] = averager is not None
    report["left"] = sorted(name for name in os.listdir(shm_dir) if name.startswith("rlhfctl-grads-"))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (reference, shared)]
    report["max_diff"], report["ranks_identical"] = 0.0, True
    for step in range(4):
        torch.manual_seed(100 * step + rank)  # each rank its own data
        inputs = torch.randn(8, 64)
        for model in (reference, shared):
            model(inputs).pow(2).mean().backward()
        for ref, got in zip(reference.parameters(), shared.parameters()):
            report["max_diff"] = max(report["max_diff"], float((ref.grad - got.grad).abs().max()))
            gathered = [torch.empty_like(got.grad) for _ in range(2)]
            dist.all_gather(gathered, got.grad)
            report["ranks_identical"] &= bool(torch.equal(gathered[0], gathered[1]))
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    report["grad_scale"] = max(float(p.abs().max()) for p in shared.parameters())
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(run, args=(sys.argv[1], int(sys.argv[2]), sys.argv[3]), nprocs=2)
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not shm_allreduce.SHM_DIRECTORY.is_dir(), reason="no /dev/shm on this system")
def test_two_ranks_average_like_gloo_identically_and_leave_nothing(tmp_path: Path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    completed = subprocess.run([sys.executable, str(script), str(tmp_path), str(_free_port()),
                                str(shm_allreduce.SHM_DIRECTORY)],
                               capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["apart_hook"] is False and report["apart_left"] == []
        assert report["hook"] is True
        assert report["left"] == []  # unlinked once both ranks mapped them
        assert report["ranks_identical"] is True
        assert report["max_diff"] < 1e-6  # the same mean as gloo's (rounding may differ in the last bit)
        assert report["grad_scale"] > 0


def test_create_refuses_a_directory_without_room(tmp_path: Path, monkeypatch):
    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(shm_allreduce.os, "statvfs", lambda _path: Full())
    assert shm_allreduce._create(tmp_path / "slot", 1 << 20, b"n" * 16) is False
    assert list(tmp_path.iterdir()) == []


def test_create_reserves_the_space_and_writes_the_nonce(tmp_path: Path):
    path = tmp_path / "slot"
    assert shm_allreduce._create(path, 1 << 16, b"0123456789abcdef") is True
    assert path.stat().st_size == 1 << 16
    assert shm_allreduce._starts_with(path, b"0123456789abcdef")
    assert not shm_allreduce._starts_with(path, b"fedcba9876543210")
    assert not shm_allreduce._starts_with(tmp_path / "missing", b"0123456789abcdef")
    assert shm_allreduce._create(path, 1 << 16, b"0123456789abcdef") is False  # never reuses a name
    os.unlink(path)


def test_attach_is_a_no_op_without_a_process_group():
    import torch

    assert shm_allreduce.attach(torch.nn.Linear(2, 2)) is None
