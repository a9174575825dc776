"""FSDP2 helpers: the wrap policy, and in a 2-process gloo group the sharded forward, the DCP round trip (also into
an unsharded model: another worker count), the gathered export and generation that differs per worker."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from rlhfctl.training.fsdp import BlocksNotFound, transformer_blocks


def _tiny_gpt2(kind: str = "lm", seed: int = 0):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=3, n_head=2, pad_token_id=0,
                        num_labels=1)
    return (GPT2LMHeadModel if kind == "lm" else GPT2ForSequenceClassification)(config)


# ----------------------------------------------------------------------------------------------- wrap policy


def test_blocks_are_the_models_no_split_modules_inside_any_wrapper():
    from rlhfctl.models.scoring import make_scorer

    lm = _tiny_gpt2("lm")
    assert transformer_blocks(lm) == list(lm.transformer.h)
    scorer = make_scorer(_tiny_gpt2("score"))
    assert [type(block).__name__ for block in transformer_blocks(scorer)] == ["GPT2Block"] * 3


def test_without_no_split_modules_the_list_of_identical_layers_is_used():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(8, 4)
            self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
            self.heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 2)])  # mixed: not blocks

    stack = Stack()
    assert transformer_blocks(stack) == list(stack.layers)


def test_a_model_without_blocks_is_refused_naming_its_class():
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = object()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))

    with pytest.raises(BlocksNotFound, match=r'strategy = "fsdp": cannot find the transformer blocks of Opaque') as error:
        transformer_blocks(Opaque())
    assert error.value.exit_code == 2
    assert "ddp" in error.value.hint


# ----------------------------------------------------------------------------------------------- 2 processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from rlhfctl.training.checkpoint import TrainState
    from rlhfctl.training.fsdp import fsdp_units, full_state_dict, gathered, plain_copy, shard_model
    from rlhfctl.training.fsdp_buffers import _POOL, PooledAllGather
    from rlhfctl.training.sharded_checkpoint import read_shards, write_shards

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results: dict = {}
    try:
        reference = _tiny_gpt2("lm", seed=0)
        ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(1))
        expected = reference(input_ids=ids).logits

        model = shard_model(_tiny_gpt2("lm", seed=0))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # before any forward, as the recipes do
        results["units"] = len(fsdp_units(model))
        full = sum(param.numel() for param in reference.parameters())
        local = sum(param.to_local().numel() for param in model.parameters())
        results["local_fraction"] = local / full
        results["forward_matches"] = bool(torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5))

        # one optimizer step (its collectives' buffers from the pool, reused across the blocks: the same step as an
        # unsharded model's), then the sharded checkpoint round trip into a model with other weights
        torch.manual_seed(7)  # the same dropout masks as the unsharded step below (and on both ranks)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        results["pooled"] = all(isinstance(unit._get_fsdp_state()._fsdp_param_group._all_gather_comm, PooledAllGather)
                                for unit in fsdp_units(model))
        results["pool_buffers"] = sum(len(buffers) for buffers in _POOL._buffers.values())
        reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
        torch.manual_seed(7)
        reference(input_ids=ids, labels=ids).loss.backward()
        reference_optimizer.step()
        folder = Path(out) / f"rank{rank}"  # one folder per rank, as Ray Train stages them
        files = write_shards(TrainState(models={"m": model}, optimizers={"m": optimizer}), folder)
        results["files"] = sorted(files)
        trained = full_state_dict(model)

        other = shard_model(_tiny_gpt2("lm", seed=5))
        other_optimizer = torch.optim.AdamW(other.parameters(), lr=1e-2)
        merged = Path(out) / "merged" / "shards"
        dist.barrier()
        if rank == 0:  # what Ray Train does with the ranks' folders of one report
            merged.mkdir(parents=True)
            for index in range(world):
                for path in (Path(out) / f"rank{index}" / "shards").iterdir():
                    path.rename(merged / path.name)
        dist.barrier()
        read_shards(merged.parent, TrainState(models={"m": other}, optimizers={"m": other_optimizer}))
        restored = full_state_dict(other)
        moments = [state["exp_avg"].to_local() for state in other_optimizer.state.values()]
        original_moments = [state["exp_avg"].to_local() for state in optimizer.state.values()]
        results["moments_restored"] = all(torch.equal(a, b) for a, b in zip(moments, original_moments))

        # generation of different lengths per worker under gathered(): no collective inside
        with gathered(model):
            with gathered(model):  # nested (generation inside validation): leaving it keeps the outer block's hold
                pass
            generated = model.generate(ids[:, :4], max_new_tokens=3 + 4 * rank, do_sample=False, pad_token_id=0)
        results["generated"] = list(generated.shape)
        results["after_generation_matches"] = bool(torch.isfinite(model(input_ids=ids).logits).all())

        if rank == 0:
            results["weights_restored"] = all(torch.equal(trained[key], restored[key]) for key in trained)
            results["step_matches_unsharded"] = all(
                torch.allclose(trained[key], reference.state_dict()[key], atol=1e-5) for key in trained)
            copy = plain_copy(model, trained)
            results["copy_class"] = type(copy).__name__
            results["copy_tied"] = copy.lm_head.weight is copy.transformer.wte.weight
            results["copy_matches"] = all(torch.equal(copy.state_dict()[key], trained[key]) for key in trained)
            torch.save(trained, Path(out) / "trained.pt")
    finally:
        (Path(out) / f"result{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("fsdp-ranks")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"result{rank}.json").read_text()) for rank in range(2)], out


def test_each_rank_keeps_half_of_every_tensor_and_computes_the_full_forward(two_ranks):
    results, _ = two_ranks
    for result in results:
        assert result["units"] == 3 + 1  # three blocks and the root (the tied LM head stays with the embeddings)
        assert 0.45 < result["local_fraction"] < 0.55
        assert result["forward_matches"]
        assert result["pooled"]
        # 3 blocks + root: all-gather outputs (two alive in a forward), reduce-scatter input and output per size
        assert 0 < result["pool_buffers"] < 4 * 4
    assert results[0]["step_matches_unsharded"]


def test_sharded_checkpoint_round_trip_restores_weights_and_optimizer_moments(two_ranks):
    results, _ = two_ranks
    assert results[0]["files"] == ["shards/.metadata", "shards/__0_0.distcp"]
    assert results[1]["files"] == ["shards/__1_0.distcp"]
    assert results[0]["weights_restored"]
    assert all(result["moments_restored"] for result in results)


def test_sharded_checkpoint_loads_into_an_unsharded_model_another_worker_count(two_ranks):
    from rlhfctl.training.checkpoint import TrainState
    from rlhfctl.training.sharded_checkpoint import read_shards

    _, out = two_ranks
    model = _tiny_gpt2("lm", seed=9)
    read_shards(out / "merged", TrainState(models={"m": model}, optimizers={"m": torch.optim.AdamW(
        model.parameters(), lr=1e-2)}))
    trained = torch.load(out / "trained.pt")
    assert all(torch.equal(model.state_dict()[key], trained[key]) for key in trained)


def test_export_copy_is_a_plain_tied_model_and_generation_may_differ_per_worker(two_ranks):
    results, _ = two_ranks
    assert results[0]["copy_class"] == "GPT2LMHeadModel"
    assert results[0]["copy_tied"] and results[0]["copy_matches"]
    assert [result["generated"] for result in results] == [[2, 7], [2, 11]]
    assert all(result["after_generation_matches"] for result in results)


# ----------------------------------------------------------------------------------------------- bad input (CLI)

OPAQUE_MODELING = '''
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class OpaqueConfig(PretrainedConfig):
    model_type = "opaque"

    def __init__(self, vocab_size=1024, hidden_size=8, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        super().__init__(**kwargs)


class OpaqueForScore(PreTrainedModel):
    """No _no_split_modules and no list of layers: nothing FSDP can shard block by block."""

    config_class = OpaqueConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.body = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.Tanh())
        self.score = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return SequenceClassifierOutput(logits=self.score(self.body(self.embed(input_ids))).mean(1))
'''


@pytest.fixture()
def opaque_model(tmp_path, tiny_model_dir) -> Path:
    folder = tmp_path / "opaque"
    folder.mkdir()
    (folder / "modeling_opaque.py").write_text(OPAQUE_MODELING, encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "opaque", "architectures": ["OpaqueForScore"], "vocab_size": 1024, "hidden_size": 8,
        "auto_map": {"AutoConfig": "modeling_opaque.OpaqueConfig",
                     "AutoModelForSequenceClassification": "modeling_opaque.OpaqueForScore"}}), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    return folder


def _rm_dry_run(tmp_path: Path, model: Path, *overrides: str):
    from typer.testing import CliRunner

    from rlhfctl.cli.app import app

    config = Path(__file__).resolve().parents[2] / "examples" / "configs" / "rm.toml"
    return CliRunner().invoke(app, ["rm", "train", str(config), "--dry-run", f"general.base_model={model}",
                                    f"general.output_dir={tmp_path / 'run'}",
                                    f"general.checkpoint_dir={tmp_path / 'model'}", *overrides])


def test_fsdp_refuses_a_model_without_blocks_before_any_worker_starts(tmp_path, opaque_model):
    result = _rm_dry_run(tmp_path, opaque_model, "training.strategy=fsdp", "training.num_training_workers=2",
                         "general.trust_remote_code=true")
    assert result.exit_code == 2, result.output
    assert "training.strategy" in result.output and "OpaqueForScore" in result.output
    assert "Traceback" not in result.output
    ddp = _rm_dry_run(tmp_path, opaque_model, "training.num_training_workers=2", "general.trust_remote_code=true")
    assert ddp.exit_code == 0, ddp.output  # the same model is fine under DDP


def test_fsdp_with_one_worker_warns_and_runs_as_ddp(tmp_path, tiny_model_dir):
    result = _rm_dry_run(tmp_path, tiny_model_dir, "training.strategy=fsdp", "training.num_training_workers=1")
    assert result.exit_code == 0, result.output
    assert 'training.strategy = "fsdp" with one worker runs as "ddp"' in " ".join(result.output.split())
