"""One LoRA linear layer as one autograd node: the base layer's output plus the scaled adapter path, fused.

peft 0.21's ``lora.Linear`` computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` module by module: per layer
and forward a ``dropout`` call, two adapter matmuls, an output-sized product and an output-sized sum, and autograd
records five nodes, each with a backward of its own (the product's and the sum's are output-sized passes too, and the
input gradient is the sum of two input-sized parts). :func:`lora_linear` computes the same function with the adapter
product accumulated into the base output by the matmul itself (``out += scaling * (x A^T) B^T``, one ``addmm_``),
and its backward does the same for the input gradient (``grad_x = G W^T + scaling * (G B) A``):

    forward   out = x W^T + b;  down = x A^T  (rows, r);  out += scaling * down B^T
    backward  up = G B  (rows, r);  dB = scaling * G^T down;  dA = scaling * up^T x;  dx = G W + scaling * up A

``G``: the output's gradient ``(rows, out)``; ``W``: the base weight ``(out, in)`` (``nn.Linear``) or ``(in, out)``
(GPT-2's ``Conv1D``, ``transposed``). The same products as peft's; only the floating-point order of the adapter term's
scaling and sum differs (agreement to float rounding, checked in tests/models/test_lora_linear.py). It applies to the
plain case only — one active adapter, no LoRA dropout, frozen base weight and bias, no autocast, one dtype throughout
(:func:`fusable`); anything else takes peft's forward. Measured on the benchmark's 14.6 M GPT-2 (LoRA PPO update,
2 CPU threads): see benchmarks/README.md, "LoRA beside TRL + peft".

Only imported by code that already runs torch (the adapted layers' forward), so torch is imported at the top.
"""

from __future__ import annotations

import torch
from torch import nn


class _LoraLinearFunction(torch.autograd.Function):
    """``x W^T + b + scaling * (x A^T) B^T`` with gradients for ``x``, ``lora_A`` and ``lora_B`` only (the base is
    frozen: :func:`fusable` checks it).

    The rank-``r`` products are computed with ``r`` as their rows (``A x^T``, ``B^T G^T``, ``(A x^T) G``): the same
    values as ``x A^T``, ``G B``, ``G^T (x A^T)``, but a thin left operand runs at 2-3x the speed of a thin right one
    on CPU (``G B`` for a 464 x 1536 ``G``: 0.42 ms, ``B^T G^T``: 0.14 ms; oneDNN, 2 threads)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling: float, transposed: bool):
        rows = x.reshape(-1, x.shape[-1])  # (rows, in)
        base = weight if transposed else weight.t()  # (in, out)
        out = rows @ base if bias is None else torch.addmm(bias, rows, base)  # (rows, out)
        down_t = lora_A @ rows.t()  # (r, rows): (x A^T)^T
        out.addmm_(down_t.t(), lora_B.t(), alpha=scaling)
        ctx.save_for_backward(x, weight, lora_A, lora_B, down_t)
        ctx.scaling, ctx.transposed = scaling, transposed
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lora_A, lora_B, down_t = ctx.saved_tensors
        scaling = ctx.scaling
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])  # (rows, out)
        needs_x, _, _, needs_A, needs_B = ctx.needs_input_grad[:5]
        grad_x = grad_A = grad_B = None
        up_t = lora_B.t() @ grad_rows.t() if needs_x or needs_A else None  # (r, rows): (G B)^T
        if needs_B:
            grad_B = (down_t @ grad_rows).t().mul_(scaling)  # (out, r)
        if needs_A:
            grad_A = (up_t @ x.reshape(-1, x.shape[-1])).mul_(scaling)  # (r, in)
        if needs_x:
            grad_x = grad_rows @ (weight.t() if ctx.transposed else weight)  # (rows, in)
            grad_x.addmm_(up_t.t(), lora_A, alpha=scaling)
            grad_x = grad_x.view(x.shape)
        return grad_x, None, None, grad_A, grad_B, None, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_A: torch.Tensor,
                lora_B: torch.Tensor, scaling: float, *, transposed: bool) -> torch.Tensor:
    """``base(x) + scaling * lora_B(lora_A(x))`` as one autograd node.

    ``x``: ``(..., in)``; ``weight``: ``(out, in)``, or ``(in, out)`` with ``transposed`` (GPT-2's ``Conv1D``);
    ``bias``: ``(out,)`` or None; ``lora_A``: ``(r, in)``; ``lora_B``: ``(out, r)``. Returns ``(..., out)``. The
    base weight and bias get no gradient (they must not require one)."""
    return _LoraLinearFunction.apply(x, weight, bias, lora_A, lora_B, scaling, transposed)


def fusable(layer, x: torch.Tensor) -> bool:
    """Whether peft LoRA layer ``layer`` (a ``lora.Linear``, adapters on and not merged) computes exactly
    :func:`lora_linear` on input ``x``: one active adapter, plain LoRA (no DoRA or other variant, no LoRA bias), no
    LoRA dropout, an ``nn.Linear`` or ``Conv1D`` base whose weight and bias are frozen, no autocast, and one dtype
    for the input, the base and the adapter."""
    from transformers.pytorch_utils import Conv1D

    adapters = layer.active_adapters
    if len(adapters) != 1 or adapters[0] not in layer.lora_A or adapters[0] in layer.lora_variant:
        return False
    adapter = adapters[0]
    base = layer.get_base_layer()
    if type(base) not in (nn.Linear, Conv1D) or layer.lora_bias.get(adapter, False):
        return False
    if not isinstance(layer.lora_dropout[adapter], nn.Identity) or torch.is_autocast_enabled(x.device.type):
        return False
    tensors = (base.weight, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight)
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return False
    return all(type(tensor) is nn.Parameter and tensor.dtype == x.dtype for tensor in tensors)


def fused_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """:func:`lora_linear` for a layer :func:`fusable` accepted."""
    from transformers.pytorch_utils import Conv1D

    adapter = layer.active_adapters[0]
    base = layer.get_base_layer()
    return lora_linear(x, base.weight, base.bias, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
                       layer.scaling[adapter], transposed=isinstance(base, Conv1D))
