"""Worker-side pieces on the single-process path: optimizer groups, scheduler, context, progress, save/restore."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from rlhfctl.config.schema import RMConfig
from rlhfctl.progress.events import CheckpointSaved, PhaseStarted, RunStarted, StepEvent
from rlhfctl.training.checkpoint import TrainState, checkpoint_name, latest_checkpoint
from rlhfctl.training.progress_actor import LocalChannel
from rlhfctl.training.optim import build_optimizer, build_scheduler
from rlhfctl.training.worker import CoreSettings, LoopConfig, setup_worker


def _config(tmp_path, **training) -> RMConfig:
    return RMConfig.model_validate({
        "general": {"base_model": "unused", "output_dir": str(tmp_path / "out"),
                    "checkpoint_dir": str(tmp_path / "model"), "seed": 3},
        "dataset": {"train_file": str(tmp_path / "rm.jsonl")},
        "training": {"num_training_workers": 1, **training},
    })


@dataclass(frozen=True)
class RowsPayload:
    rows: list[int]


def _loop_config(tmp_path, channel: LocalChannel, resume_from=None, **training) -> LoopConfig:
    core = CoreSettings(stage="rm", mode="local", run_dir=str(tmp_path / "out" / "rm_run"),
                        checkpoint_dir=str(tmp_path / "model"), total_steps=10, samples_per_step=4,
                        resume_from=resume_from, local_channel_id=channel.channel_id)
    return LoopConfig(config=_config(tmp_path, **training), payload=RowsPayload(rows=[1, 2, 3]), core=core)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.ln_f = torch.nn.LayerNorm(4)
        self.norm = torch.nn.LayerNorm(4)
        self.embed = torch.nn.Embedding(10, 4)
        self.dropout = torch.nn.Dropout(0.3)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_weight_decay_skips_biases_and_norms(tmp_path):
    model = _Tiny()
    optimizer = build_optimizer(model, _config(tmp_path, weight_decay=0.1, optimizer="AdamW").training)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.proj.weight), id(model.embed.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model.proj.bias), id(model.ln_f.weight), id(model.ln_f.bias),
                                                    id(model.norm.weight), id(model.norm.bias)}
    sgd = build_optimizer(model.named_parameters(), _config(tmp_path, optimizer="SGD").training)
    assert isinstance(sgd, torch.optim.SGD)


def test_scheduler_warms_up_then_decays(tmp_path):
    training = _config(tmp_path, learning_rate=1.0, warmup_ratio=0.2, lr_scheduler="linear").training
    optimizer = build_optimizer(_Tiny(), training)
    scheduler = build_scheduler(optimizer, training, num_training_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])  # 2 warmup steps
    assert lrs[3] == pytest.approx(7 / 8) and lrs[-1] == pytest.approx(1 / 8)


def test_local_context_logs_saves_and_restores(tmp_path):
    channel = LocalChannel()
    ctx = setup_worker(_loop_config(tmp_path, channel, save_every_steps=2))
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
    assert ctx.payload == RowsPayload(rows=[1, 2, 3])
    assert torch.get_num_threads() == 1  # the worker's CPU share
    assert ctx.all_reduce_mean({"loss": 2.0}) == {"loss": 2.0}
    assert ctx.checkpoint_due(4) and not ctx.checkpoint_due(3)
    assert sorted(ctx.shard(7, epoch=0)) == list(range(7))

    model = torch.nn.Linear(3, 1)
    optimizer = build_optimizer(model, ctx.training)
    state = TrainState(models={"m": model}, optimizers={"m": optimizer})
    assert ctx.restore(state) is None  # fresh run
    ctx.log(1, {"loss": 0.5}, epoch=0)
    state.step, state.batch_in_epoch = 2, 4
    ctx.save(state, {"loss": 0.5})
    phase, *events = channel.drain()
    assert phase == PhaseStarted("loading model", time=phase.time)  # set up: the display names what comes next
    assert isinstance(events[0], RunStarted) and events[0].start_step == 0
    assert events[1] == StepEvent(step=1, epoch=0, split="train", metrics={"loss": 0.5}, time=events[1].time)
    assert isinstance(events[2], CheckpointSaved) and events[2].step == 2
    saved = latest_checkpoint(tmp_path / "out" / "rm_run")
    assert saved.name == checkpoint_name(2)

    weights = model.weight.detach().clone()
    resumed = setup_worker(_loop_config(tmp_path, channel, resume_from=str(saved), save_every_steps=2))
    fresh = torch.nn.Linear(3, 1)
    restored = resumed.restore(TrainState(models={"m": fresh}, optimizers={"m": build_optimizer(fresh, ctx.training)}))
    assert (restored.step, restored.batch_in_epoch) == (2, 4)
    assert torch.equal(fresh.weight, weights)
    assert [event.start_step for event in channel.drain() if isinstance(event, RunStarted)] == [2]
    channel.close()


def test_local_checkpoints_keep_the_latest_two(tmp_path):
    channel = LocalChannel()
    ctx = setup_worker(_loop_config(tmp_path, channel))
    model = torch.nn.Linear(2, 1)
    for step in (1, 2, 3):
        ctx.save(TrainState(step=step, models={"m": model}))
    names = sorted(path.name for path in (tmp_path / "out" / "rm_run").iterdir())
    assert names == [checkpoint_name(2), checkpoint_name(3)]
    channel.close()


def test_gradient_sync_skips_the_all_reduce_only_when_asked(tmp_path):
    channel = LocalChannel()
    ctx = setup_worker(_loop_config(tmp_path, channel))
    entered: list[str] = []

    class Wrapped(torch.nn.Linear):  # stands in for a DistributedDataParallel model
        def __init__(self, name):
            super().__init__(1, 1)
            self.name = name

        def no_sync(self):
            import contextlib

            @contextlib.contextmanager
            def recording():
                entered.append(self.name)
                yield

            return recording()

    policy, value, bare = Wrapped("policy"), Wrapped("value"), torch.nn.Linear(1, 1)
    with ctx.gradient_sync(policy, value, bare, sync=True):
        pass
    assert entered == []
    with ctx.gradient_sync(policy, value, bare, sync=False):
        assert entered == ["policy", "value"]  # the plain model has nothing to skip
    channel.close()


@pytest.mark.parametrize(("max_grad_norm", "expected_step"), [(1.0, 0.1 * 3 / 5), (0.0, 0.1 * 3)])
def test_step_clips_to_max_grad_norm_and_zero_turns_clipping_off(tmp_path, max_grad_norm, expected_step):
    channel = LocalChannel()
    ctx = setup_worker(_loop_config(tmp_path, channel, optimizer="SGD", learning_rate=0.1,
                                    max_grad_norm=max_grad_norm))
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    optimizer = build_optimizer(model, ctx.training)
    model.weight.grad = torch.tensor([[3.0, 4.0]])  # norm 5
    grad_norm = ctx.step(optimizer, None, model)
    # the norm is reported before clipping either way; clipped to 1 the gradient is [3, 4] / 5
    assert grad_norm == pytest.approx(5.0)
    assert model.weight[0, 0].item() == pytest.approx(-expected_step)
    assert model.weight.grad is None
    channel.close()


@pytest.mark.parametrize("sharded", [False, True])
def test_an_fsdp_worker_on_cpu_trims_the_heap_after_each_step(tmp_path, monkeypatch, sharded):
    """FSDP on CPU: each optimizer step is followed by a heap trim (what its gathers and full gradients freed);
    DDP and single-process steps are not."""
    from rlhfctl.training import allocator
    from rlhfctl.training.worker import WorkerContext

    trims = []
    monkeypatch.setattr(allocator, "release_free_memory", lambda **kwargs: trims.append(kwargs) or True)
    monkeypatch.setattr(WorkerContext, "sharded", property(lambda self: sharded))
    channel = LocalChannel()
    ctx = setup_worker(_loop_config(tmp_path, channel, optimizer="SGD"))
    assert ctx.sharded_on_cpu is sharded
    model = torch.nn.Linear(2, 1)
    model.weight.grad, model.bias.grad = torch.ones(1, 2), torch.ones(1)
    ctx.step(build_optimizer(model, ctx.training), None, model)
    assert trims == ([{"sharded_on_cpu": True}] if sharded else [])
    channel.close()


def test_a_worker_refuses_a_plan_its_own_device_cannot_hold(tmp_path):
    """The check the driver leaves to the workers (a joined cluster, a GPU without nvidia-smi): setup_worker
    compares the plan with the worker's own device (here this machine's RAM) before any model is loaded."""
    from rlhfctl.errors import UserError
    from rlhfctl.training.memory import Breakdown, MemoryEstimate
    from rlhfctl.training.memory_plan import WorkerMemoryCheck

    def loop_config(peak_bytes: int) -> LoopConfig:
        estimate = MemoryEstimate(per_worker_peak_bytes=peak_bytes, breakdown=Breakdown(weights=peak_bytes),
                                  per_model={}, peak_phase="train step", phase_peaks={}, trainable_parameters=0,
                                  total_parameters=0, device="cpu")
        config = _loop_config(tmp_path, channel)
        config["core"].memory_check = WorkerMemoryCheck("rm", estimate)
        return config

    channel = LocalChannel()
    try:
        with pytest.raises(UserError, match="this rm run needs about 1024.0 GiB per worker"):
            setup_worker(loop_config(1024**4))  # 1 TiB: no machine running the suite has it free
        assert setup_worker(loop_config(1024**2)).rank == 0  # 1 MiB fits anywhere
    finally:
        channel.close()
