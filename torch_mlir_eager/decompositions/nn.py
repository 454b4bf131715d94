"""Neural-network ops in PyTorch's CPU formulas: eval batch norm, fused attention, gelu, softshrink, renorm, cdist."""
from __future__ import annotations

import math

import torch

from .registry import decomposes

_aten = torch.ops.aten


def _eval(bound: dict) -> bool:
    """An eval-mode batch norm with running statistics: its direct lowering fails for static shapes (a tensor.cast
    of the empty saved-statistics results) and, for dynamic ones, computes the per-channel rsqrt per element
    (1x256x?x? at 14x14: 27 us, decomposed 17)."""
    return not bound.get("training") and bound.get("running_mean") is not None and \
        bound.get("running_var") is not None


@decomposes(_aten.native_batch_norm.default, top=True, general=True, only=_eval)
def _eval_batch_norm(x, weight, bias, mean, var, training, momentum, eps, *, general=None):
    """Eval batch norm as PyTorch's CPU kernel computes it: per channel alpha = weight / sqrt(var + eps) and
    beta = bias - mean * alpha, then y = x * alpha + beta. The per-channel terms are stacked into one [2, C] tensor
    first: elementwise fusion cannot pull them (and their rsqrt) into the loop over x, which stays a plain
    multiply-add that split-loops may share across threads (1x64x112x112: 208 us before, native 122).
    Training mode, or no running statistics: `general`, the table's own decomposition."""
    if training or mean is None or var is None:
        if general is None:
            raise NotImplementedError("native_batch_norm: no general decomposition")
        return general(x, weight, bias, mean, var, training, momentum, eps)
    alpha = torch.rsqrt(var + eps)
    if weight is not None:
        alpha = alpha * weight
    beta = -mean * alpha
    if bias is not None:
        beta = beta + bias
    ab = torch.stack([alpha, beta]).view([2, x.shape[1]] + [1] * (x.dim() - 2))
    y = x * ab[0] + ab[1]
    return y, x.new_zeros((0,)), x.new_zeros((0,))


@decomposes(_aten._native_multi_head_attention.default, top=True)
def _native_mha(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias, mask=None,
                need_weights=True, average_attn_weights=True, mask_type=None):
    """nn.MultiheadAttention's inference fast path (ViT, nn.TransformerEncoderLayer in eval) written out in ATen
    ops, in PyTorch's CPU order: q, k, v projected with the packed weight and bias, q divided by sqrt(head dim),
    softmax(q k^T) v per head, heads merged, then the output projection. Batched (B, L, E) inputs without a mask
    only: anything else raises here and the call runs natively."""
    if mask is not None or query.dim() != 3:
        raise NotImplementedError("_native_multi_head_attention: only unmasked batched inputs are decomposed")
    b, lq, e = query.shape
    d = e // num_head
    w_q, w_k, w_v = qkv_weight.split(embed_dim)
    b_q, b_k, b_v = qkv_bias.split(embed_dim)

    def heads(x, w, bias):
        y = torch.nn.functional.linear(x, w, bias)
        return y.view(b, x.shape[1], num_head, d).transpose(1, 2)
    q = heads(query, w_q, b_q) / math.sqrt(d)
    k, v = heads(key, w_k, b_k), heads(value, w_v, b_v)
    att = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    out = (att @ v).transpose(1, 2).reshape(b, lq, e)
    out = torch.nn.functional.linear(out, proj_weight, proj_bias)
    if not need_weights:
        return out, None              # what PyTorch returns (an undefined tensor)
    return out, att.mean(dim=1) if average_attn_weights else att


@decomposes(_aten.softshrink.default, top=True, only=True)
def _softshrink(x, lambd=0.5):
    """PyTorch's CPU formula: x - lambd above lambd, x + lambd below -lambd, else x * 0 (-0.0, NaN kept)."""
    return torch.where(x > lambd, x - lambd, torch.where(x < -lambd, x + lambd, x * 0))


@decomposes(_aten.gelu.default, top=True, general=True, only=lambda a: a.get("approximate") == "tanh")
def _gelu(x, approximate="none", *, general=None):
    """The tanh approximation as PyTorch's CPU kernel computes it (torch-mlir's own lowering is off by up to 5e-5);
    the exact form is `general`'s, the table's own decomposition."""
    if approximate != "tanh":
        if general is None:
            raise NotImplementedError("no decomposition of the exact form")
        return general(x, approximate=approximate)
    beta = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5
    inner = beta * (x + 0.044715 * (x * x * x))
    return 0.5 * x * (1 + torch.tanh(inner))


@decomposes(_aten.renorm.default, top=True, only=True)
def _renorm(x, p, dim, maxnorm):
    """Each slice along `dim` scaled to norm maxnorm where its p-norm exceeds it: PyTorch's factor
    maxnorm / (norm + 1e-7), the norm taken over every other dim."""
    dim = dim % x.dim()
    others = [d for d in range(x.dim()) if d != dim]
    a = x.abs()
    # the norm written out: torch-mlir lowers linalg_vector_norm with an abort() on a NaN input
    if p == math.inf:
        norm = a.amax(others, keepdim=True)
    elif p == -math.inf:
        norm = a.amin(others, keepdim=True)
    elif p == 0:
        norm = (a != 0).to(x.dtype).sum(others, keepdim=True)
    elif p == 1:
        norm = a.sum(others, keepdim=True)
    elif p == 2:
        norm = (a * a).sum(others, keepdim=True).sqrt()
    else:
        norm = a.pow(p).sum(others, keepdim=True).pow(1.0 / p)
    return x * torch.where(norm > maxnorm, maxnorm / (norm + 1e-7), torch.ones_like(norm))


def _pairwise(diff, p: float):
    """The p-norm over the last dim of a difference tensor, as PyTorch's distance kernels define it."""
    a = diff.abs()
    if p == 0:
        return (a != 0).to(diff.dtype).sum(-1)
    if p == math.inf:
        return a.amax(-1) if a.shape[-1] else a.sum(-1)
    if p == 1:
        return a.sum(-1)
    if p == 2:
        return torch.sqrt((diff * diff).sum(-1))
    return torch.pow(torch.pow(a, p).sum(-1), 1.0 / p)


@decomposes(_aten._cdist_forward.default)
def _cdist(x1, x2, p, compute_mode=None):
    """PyTorch's two ways: for p = 2 with more than 25 rows on a side (or compute_mode 1), the matrix-product form
    (|a|^2 - 2ab + |b|^2, clamped at 0); else each difference's p-norm."""
    rows = max(x1.shape[-2], x2.shape[-2])
    if p == 2 and (compute_mode == 1 or (compute_mode in (None, 0) and rows > 25)):
        n1 = (x1 * x1).sum(-1, keepdim=True)
        n2 = (x2 * x2).sum(-1, keepdim=True)
        a = torch.cat([-2 * x1, n1, torch.ones_like(n1)], -1)
        b = torch.cat([x2, torch.ones_like(n2), n2], -1)
        return torch.matmul(a, b.transpose(-1, -2)).clamp_min(0).sqrt()
    return _pairwise(x1.unsqueeze(-2) - x2.unsqueeze(-3), p)


@decomposes(_aten._pdist_forward.default)
def _pdist(x, p=2):
    n = x.shape[0]
    i, j = torch.triu_indices(n, n, 1)
    return _pairwise(x[i] - x[j], p)
