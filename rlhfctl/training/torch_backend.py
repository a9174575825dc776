"""Ray Train's torch process-group backend, without ``import torch`` outside the workers.

``ray.train.torch.TorchConfig`` lives in a module that imports torch, and Ray Train's controller actor calls its
backend in its own process, so with ``TorchTrainer`` both the driver and the controller import torch only to
tell the workers to call ``init_process_group``. ``import torch`` costs ~140 MB of private memory per process on
CPU (measured: a 2-worker tiny run's driver 292 MB, controller 280 MB). :class:`TorchBackendConfig` does what
``TorchConfig``/``_TorchBackend`` do — pick ``MASTER_ADDR``/``MASTER_PORT`` on worker 0, set the torch launcher's
rank variables, connect gloo/nccl, tear down at the end — but every step that needs torch is a function that runs
*on the workers*, where it calls Ray's own helpers from ``ray.train.torch.config``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ray.train.backend import Backend, BackendConfig


@dataclass
class TorchBackendConfig(BackendConfig):
    """Like ``ray.train.torch.TorchConfig``: ``backend`` ``"gloo"`` (CPU) or ``"nccl"`` (GPU)."""

    backend: str = "gloo"
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _TorchProcessGroupBackend

    @property
    def train_func_context(self):
        return _DefaultDeviceContext

    @property
    def framework(self):
        try:
            from ray.train.v2._internal.util import TrainingFramework
        except ImportError:  # an older Ray without framework tags
            return None
        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": self.init_method, "timeout_s": self.timeout_s}


class _DefaultDeviceContext:
    """Around the train function on each worker: select this worker's GPU as torch's default device."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        self._inner = TorchConfigContextManager()
        return self._inner.__enter__()

    def __exit__(self, *exc_info):
        return self._inner.__exit__(*exc_info)


class _TorchProcessGroupBackend(Backend):
    """Runs in the controller; everything that touches torch is sent to the workers."""

    def on_start(self, worker_group, backend_config: TorchBackendConfig) -> None:
        import ray
        from ray.train._internal.utils import get_address_and_port

        master_addr, master_port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_launcher_environment, master_addr, master_port)
        ray.get([
            worker_group.execute_single_async(rank, _connect_process_group, backend=backend_config.backend,
                                              world_rank=rank, world_size=len(worker_group),
                                              timeout_s=backend_config.timeout_s)
            for rank in range(len(worker_group))
        ])

    def on_shutdown(self, worker_group, backend_config: TorchBackendConfig) -> None:
        import ray

        ray.get(worker_group.execute_async(_disconnect_process_group, len(worker_group) > 1), timeout=60)


def _set_launcher_environment(master_addr: str, master_port: int) -> None:
    """On a worker: the variables ``torchrun`` would set (MASTER_*, RANK, LOCAL_RANK, WORLD_SIZE, ...)."""
    from ray.train.torch.config import _set_torch_distributed_env_vars

    os.environ["MASTER_ADDR"] = master_addr
    os.environ["MASTER_PORT"] = str(master_port)
    _set_torch_distributed_env_vars()


def _connect_process_group(*, backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(backend=backend, world_rank=world_rank, world_size=world_size,
                               init_method="env://", timeout_s=timeout_s)


def _disconnect_process_group(destroy: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy)
