"""The reward model's final block evaluated at the last real tokens gives the full forward's scores and gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlhfctl.models.last_position import final_block, final_block_at, has_read_shortcut  # noqa: E402
from rlhfctl.models.loading import disable_dropout  # noqa: E402
from rlhfctl.models.scoring import make_scorer  # noqa: E402
from rlhfctl.objectives.rm import last_token_index  # noqa: E402

if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("the last-token shortcut needs transformers 5", allow_module_level=True)

PAD = 0


def _batch(padding: str):
    lengths = [9, 4, 12, 1]
    width = max(lengths)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.full((len(lengths), width), PAD)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        span = slice(0, length) if padding == "right" else slice(width - length, width)
        input_ids[row, span] = torch.randint(3, 50, (length,), generator=generator)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


def _at_last_token(values, attention_mask):
    return values[torch.arange(values.shape[0]), last_token_index(attention_mask)]


def _full_forward_scores(model, input_ids, attention_mask):
    """What the scorer computed before the shortcut: every block at every position, then the last real token."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state
    return model.score(_at_last_token(hidden, attention_mask)).squeeze(-1)


def _scores_and_grads(forward, model):
    model.zero_grad()
    scores = forward()
    (scores * torch.arange(1.0, scores.shape[0] + 1, dtype=scores.dtype)).sum().backward()
    return scores.detach(), {name: param.grad.clone() for name, param in model.named_parameters()
                             if param.grad is not None}


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_scores_and_gradients_match_the_full_forward(tiny_classifier, kind, padding):
    model = tiny_classifier(kind).train()  # train mode: the training path (dropout is 0 in these configs)
    input_ids, attention_mask = _batch(padding)
    scorer = make_scorer(model)
    expected, expected_grads = _scores_and_grads(lambda: _full_forward_scores(model, input_ids, attention_mask), model)
    got, got_grads = _scores_and_grads(lambda: scorer(input_ids, attention_mask), model)

    assert torch.allclose(got, expected.float(), atol=1e-6, rtol=0)  # the scorer returns fp32 scores
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-10, rtol=1e-8), name


def _in_shortcut(backbone, attention_mask, read_index):
    return final_block_at(backbone, read_index, attention_mask)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "qwen2"])
def test_the_shortcut_is_in_place_only_inside_the_block(tiny_classifier, kind):
    model = tiny_classifier(kind)
    backbone = model.base_model
    block = final_block(backbone)
    input_ids, attention_mask = _batch("right")
    read_index = (attention_mask.sum(-1) - 1)[:, None]
    with _in_shortcut(backbone, attention_mask, read_index) as engaged:
        assert engaged and "forward" in vars(block)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    assert "forward" not in vars(block)  # the class's forward again: other callers see the full model
    # Only the read positions were computed: the final block left zeros elsewhere (then the final norm ran).
    read = torch.zeros(attention_mask.shape, dtype=torch.bool)
    read[torch.arange(4)[:, None], read_index] = True
    final_norm = backbone.ln_f if kind == "gpt2" else backbone.norm
    unread = final_norm(torch.zeros(1, backbone.config.hidden_size, dtype=torch.float64))
    assert torch.equal(hidden.detach()[~read], unread.expand(int((~read).sum()), -1))


@pytest.mark.parametrize("kind, overrides", [("gpt2", {"reorder_and_upcast_attn": True})])
def test_blocks_it_does_not_model_exactly_run_their_own_forward(tiny_classifier, kind, overrides):
    model = tiny_classifier(kind, **overrides)
    input_ids, attention_mask = _batch("right")
    with _in_shortcut(model.base_model, attention_mask, (attention_mask.sum(-1) - 1)[:, None]) as engaged:
        assert not engaged
    scorer = make_scorer(model)
    assert torch.allclose(scorer(input_ids, attention_mask),
                          _full_forward_scores(model, input_ids, attention_mask).float(), atol=1e-6)


def test_an_exception_inside_leaves_the_block_unchanged(tiny_classifier):
    model = tiny_classifier("gpt2")
    block = final_block(model.base_model)
    _, attention_mask = _batch("right")
    with pytest.raises(RuntimeError, match="boom"):
        with _in_shortcut(model.base_model, attention_mask, (attention_mask.sum(-1) - 1)[:, None]):
            raise RuntimeError("boom")
    assert "forward" not in vars(block)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_any_position_reads_what_the_full_forward_gives_there(tiny_classifier, kind):
    """PPO reads the reward at the last response token, which real tokens may follow: the query stays causal."""
    from rlhfctl.models.scoring import TokenScoreModel

    model = tiny_classifier(kind).eval()
    input_ids, attention_mask = _batch("left")
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    index = torch.tensor([5, 9, 11, 11])  # mid-sequence for rows 0 and 1
    score_model = TokenScoreModel(model)
    with torch.no_grad():
        expected = score_model(input_ids, attention_mask, position_ids)[torch.arange(4), index]
        got = score_model.score_at(input_ids, attention_mask, position_ids, index)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------- every architecture

SHORTCUT_FAMILIES = {"llama", "qwen2", "qwen3", "mistral", "phi3"}  # the others run their own final block


def _kit_classifier(architecture: str, *, lora: bool = False):
    """A fp64 scalar-head model of the offline kit's ``architecture``, its sliding windows (where it has them)
    shorter than the test sequences; with ``lora``, peft adapters whose up-projections are not zero."""
    import dataclasses

    from rlhfctl.example.architectures import ARCHITECTURES, SHAPES

    shape = dataclasses.replace(SHAPES["tiny"], window=4, layers=3)
    config = ARCHITECTURES[architecture].config(shape, vocab_size=50, bos_token_id=1, eos_token_id=2)
    config.num_labels, config.pad_token_id = 1, PAD
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    # fp64 for exact comparisons, except Gemma 2, whose eager attention mask turns fully masked rows into NaN in
    # fp64 (not in fp32 or bf16, what training uses)
    model = model.float() if architecture == "gemma2" else model.double()
    disable_dropout(model)  # OPT's config has dropout 0.1; the stages that score train without dropout
    if lora:
        from rlhfctl.config.schema import LoraConfig
        from rlhfctl.models.adapters import add_lora

        add_lora(model, LoraConfig(r=4), source=architecture, score_head=True)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)  # a trained adapter: the LoRA path changes the scores
    return model.train()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3",
                                          "gpt_neox", "opt"])
def test_every_kit_architecture_scores_as_the_full_forward(architecture, lora):
    from rlhfctl.models.packing import packing_supported

    model = _kit_classifier(architecture, lora=lora)
    assert has_read_shortcut(final_block(model.base_model)) == (architecture in SHORTCUT_FAMILIES)
    # a sliding window in any layer rules packing out (transformers ignores windows under a custom 4-D mask)
    assert packing_supported(model) == (architecture in {"llama", "qwen3"})
    scores = {}
    for padding in ("right", "left"):
        input_ids, attention_mask = _batch(padding)  # rows of 1 to 12 tokens: longer than the window of 4
        scorer = make_scorer(model)
        expected, expected_grads = _scores_and_grads(
            lambda: _full_forward_scores(model, input_ids, attention_mask), model)
        got, got_grads = _scores_and_grads(lambda: scorer(input_ids, attention_mask), model)
        assert torch.allclose(got, expected.float(), atol=1e-6, rtol=0), (padding, got, expected)
        assert got_grads.keys() == expected_grads.keys()
        for name, grad in expected_grads.items():
            assert torch.allclose(got_grads[name], grad, rtol=0, atol=1e-8 + 1e-5 * float(grad.abs().max())), name
        scores[padding] = got
    assert torch.allclose(scores["right"], scores["left"], atol=1e-5, rtol=0)  # positions count real tokens only
