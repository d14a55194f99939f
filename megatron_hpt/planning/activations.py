"""Activation memory per transformer layer (Korthikanti et al. 2022, adjusted) and under 1F1B.

Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models", count the
bytes autograd keeps per layer for one micro-batch of a GPT layer (16-bit activations, MHA,
GeLU MLP with 4h, dropout on):  ``s·b·h·(34 + 5·a·s/h)``; with tensor parallelism ``t`` and
sequence parallelism ``s·b·h·(34/t + 5·a·s/(h·t))``; without SP the 10·sbh outside the TP region
(layer-norm inputs, QKV/fc1 inputs, dropout masks) stay whole: ``s·b·h·(10 + 24/t + 5as/(ht))``.

This project's layer differs (``models/provider.py``): RMSNorm, grouped-query attention with
``g`` KV groups of ``d`` channels (``a·d`` query channels), a SwiGLU MLP of width ``f`` computed by
megatron-core's unfused ``glu`` (``bias_activation_fusion=False``), dropout 0 (no masks), and on
GPUs Transformer Engine's fused norm+linear and flash attention. Per token, in elements of the
activation dtype (ε bytes; 2 for bf16), with ``t_sp = t`` under SP and 1 without:

    norms (x2):  input x + normalized output              2·2h / t_sp   (+ fp32 1/rms: 2·4 B / t_sp)
    attention:   q, k after RoPE (a·d + g·d); v, a view of the
                 fused QKV output that keeps all of it (a·d + 2g·d)
                 alive; the output (a·d)                       (3·a·d + 3·g·d) / t  (+ fp32 LSE: 4·a B / t)
    SwiGLU MLP:  fc1 out [gate; up] (2f) + silu(gate) (f)
                 + (up + 0) (f) + product = fc2 input (f)  5f / t

    bytes/layer = s·b·[ ε·(4h/t_sp + (3ad + 3gd + 5f)/t) + 8/t_sp + 4a/t ]          (flash)

Korthikanti's terms map as: 2 layer-norm inputs → norm inputs; QKV and fc1 inputs → normalized
outputs; Q, K, V → q, k, v at GQA width; 5·a·s²·b (scores, softmax, dropout) → the flash LSE;
19·sbh of the GeLU MLP → 5f of the SwiGLU; dropout masks → nothing (p = 0).

The unfused attention of megatron-core's local spec (CPU) keeps instead k and v expanded to ``a``
heads (with GQA; with MHA k and the whole QKV output, as above), the fp32/ε softmax output (``a·s`` per token) and the bool causal mask (s² per layer);
torch's decomposed RMSNorm keeps x, x/rms and the weighted output (3h) plus 1/rms; RoPE keeps
cos/sin of q and k (4·s·d per layer). ``implementation="cpu"`` counts these; the test
``tests/training/test_plan.py`` checks that count byte-exactly against what autograd saves on a
CPU forward, and the flash variant shares every other term.

Recompute (megatron-core ``recompute_granularity``): ``selective`` recomputes core attention: it
keeps q, k, v (and so the QKV output), output and drops LSE (flash) or the softmax/expanded k, v (unfused). ``full``
keeps only each recomputed block's input (ε·h/t_sp per token per block) and, during the backward
of one block, that block's full activations for one micro-batch: method ``uniform`` recomputes
blocks of N layers, ``block`` recomputes the first N layers of each (virtual) stage and keeps the
rest.

In flight under 1F1B (Narayanan et al. 2021; Korthikanti §4.2): stage ``i`` of ``p`` holds the
activations of ``min(p - i, m)`` micro-batches of its ``L/p`` layers; stage 0 therefore holds L
layers' worth. With ``v`` interleaved virtual stages the first stage holds
``L/(p·v) · min((v-1)·p + 2·(p-1) + 1, m·v)`` layer-micro-batches, i.e. ``L·(1 + (p-1)/(p·v))``.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_hpt.models.shape import ModelShape


@dataclass(frozen=True)
class ActivationSpec:
    seq_length: int
    """Tokens per sequence (s); divided by CP (context parallel splits the sequence)."""
    micro_batch_size: int
    """Sequences per micro-batch (b)."""
    tp: int = 1
    """Tensor-parallel size (t)."""
    cp: int = 1
    """Context-parallel size: each rank holds s/cp tokens."""
    sequence_parallel: bool = False
    """Megatron SP: norm activations sharded over t too."""
    recompute_granularity: str = "none"
    """none | selective | full."""
    recompute_method: str = "uniform"
    """uniform | block (with full)."""
    recompute_num_layers: int = 1
    """N of the recompute method."""
    bytes_per_element: int = 2
    """ε: 2 for bf16/fp16 activations, 4 for fp32."""
    implementation: str = "gpu"
    """gpu: TE fused norm+linear and flash attention; cpu: megatron-core local spec, torch ops."""


def layer_bytes(shape: ModelShape, spec: ActivationSpec, selective: bool = False) -> int:
    """Bytes autograd keeps for one layer and one micro-batch (module docstring's formula)."""
    s, b, eps = spec.seq_length // spec.cp, spec.micro_batch_size, spec.bytes_per_element
    h, f, a, g, d, t = (shape.hidden_size, shape.ffn_hidden_size, shape.num_attention_heads,
                        shape.num_query_groups, shape.kv_channels, spec.tp)
    t_sp = t if spec.sequence_parallel else 1
    tokens = s * b
    mlp = eps * 5 * f / t
    if spec.implementation == "gpu":
        norms = eps * 4 * h / t_sp + 2 * 4 / t_sp
        # q and k (RoPE outputs), v: a view of the fused QKV output, whose whole storage
        # (a·d + 2·g·d) it keeps alive, and the attention output
        attn = eps * (3 * a * d + 3 * g * d) / t + (0 if selective else 4 * a / t)
        return int(round(tokens * (norms + attn + mlp)))
    if spec.implementation != "cpu":
        raise ValueError(f"implementation must be gpu or cpu, got {spec.implementation!r}")
    norms = 2 * (eps * 3 * h / t_sp + 4 / t_sp)
    if selective:
        # checkpoint inputs q, k and v (a view keeping the fused QKV output alive) + output
        attn = eps * (3 * a * d + 3 * g * d) / t
        extra = 4  # an int32 scalar the checkpoint keeps
    elif g < a:  # GQA: k and v repeated to a heads (new tensors); q, output; softmax
        attn = eps * (4 * a * d) / t + eps * a * s / t
        extra = s * s  # bool causal mask, one per layer
    else:  # MHA: k after RoPE, v a view keeping the fused QKV output alive, as on the GPU path
        attn = eps * (3 * a * d + 3 * g * d) / t + eps * a * s / t
        extra = s * s
    rope = 4 * s * d * eps  # cos/sin of q and k, per position
    return int(round(tokens * (norms + attn + mlp) + extra + rope))


def layer_input_bytes(shape: ModelShape, spec: ActivationSpec) -> int:
    """Bytes of one layer's input (what full recompute keeps per block)."""
    t_sp = spec.tp if spec.sequence_parallel else 1
    return (spec.seq_length // spec.cp) * spec.micro_batch_size * shape.hidden_size \
        * spec.bytes_per_element // t_sp


def chunk_bytes(shape: ModelShape, spec: ActivationSpec, layers: int) -> tuple:
    """(kept bytes, backward transient bytes) of ``layers`` consecutive layers, one micro-batch."""
    g = spec.recompute_granularity
    if g == "none":
        return layers * layer_bytes(shape, spec), 0
    if g == "selective":
        return layers * layer_bytes(shape, spec, selective=True), 0
    if g != "full":
        raise ValueError(f"recompute granularity must be none, selective or full, got {g!r}")
    n = spec.recompute_num_layers
    full, inp = layer_bytes(shape, spec), layer_input_bytes(shape, spec)
    if spec.recompute_method == "uniform":
        blocks = -(-layers // n)
        return blocks * inp, min(n, layers) * full
    if spec.recompute_method == "block":
        r = min(n, layers)
        return r * inp + (layers - r) * full, (full if r else 0)
    raise ValueError(f"recompute method must be uniform or block, got {spec.recompute_method!r}")


def in_flight_chunks(pp: int, vpp: int, stage: int, num_microbatches: int) -> int:
    """Micro-batch x model-chunk activations stage ``stage`` holds at once under (interleaved) 1F1B."""
    if vpp <= 1:
        return min(pp - stage, num_microbatches)
    # megatron-core interleaved schedule: warm-up (pp - stage - 1)*2 + (vpp - 1)*pp, plus one
    warmup = (pp - stage - 1) * 2 + (vpp - 1) * pp
    return min(warmup + 1, num_microbatches * vpp)


def stage_activation_bytes(shape: ModelShape, spec: ActivationSpec, pp: int, vpp: int,
                           stage: int, num_microbatches: int) -> int:
    """Peak activation bytes held by pipeline stage ``stage`` (kept by in-flight micro-batches plus
    one recompute transient)."""
    chunk_layers = shape.num_layers // (pp * max(vpp, 1))
    kept, transient = chunk_bytes(shape, spec, chunk_layers)
    return in_flight_chunks(pp, vpp, stage, num_microbatches) * kept + transient


def korthikanti_bytes(shape: ModelShape, seq: int, mbs: int, tp: int, sp: bool) -> int:
    """The paper's per-layer formula as published (GPT, 16-bit, dropout, unfused attention), for
    comparison only."""
    s, b, h, a, t = seq, mbs, shape.hidden_size, shape.num_attention_heads, tp
    if sp:
        return int(s * b * h * (34 / t + 5 * a * s / (h * t)))
    return int(s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
