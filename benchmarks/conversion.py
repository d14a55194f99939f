"""Conversion speed and memory on a ~2 GB random Llama-shaped model (bf16 safetensors shards).

The model is written tensor by tensor with safetensors (no transformers model is built). Then:
1. read speed: ``cat shards > /dev/null`` (after one warming read, so both sides read the page cache),
   and, as the floor for anything that writes its output durably, ``cp shards DIR && sync``,
2. HF -> Megatron with tools/convert_hf_to_megatron.py in a child process,
3. Megatron -> HF with tools/convert_megatron_to_hf.py in a child process,
each child's peak RSS read with ``resource.getrusage(RUSAGE_CHILDREN)`` (run one child per
measurement process) and compared with the largest layer and one input shard. The baseline RSS of
the same tool converting a tiny model is reported too (interpreter + torch + megatron imports).

    python benchmarks/conversion.py [--workdir /tmp/conv_bench] [--layers 16]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=2048, intermediate_size=8192,
           num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=32000,
           max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
           hidden_act="silu", torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
SHARD_BYTES = 500 * 10 ** 6


def layer_tensors(i: int, c: dict):
    h, f, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    p = f"model.layers.{i}."
    return {p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q), p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f)}


def write_model(hf_dir: str, c: dict) -> dict:
    """Random bf16 tensors written shard by shard (at most one shard in memory)."""
    os.makedirs(hf_dir, exist_ok=True)
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], c["hidden_size"])}
    for i in range(c["num_hidden_layers"]):
        shapes.update(layer_tensors(i, c))
    shapes.update({"model.norm.weight": (c["hidden_size"],), "lm_head.weight": (c["vocab_size"], c["hidden_size"])})
    shards, cur, size = [], {}, 0
    for name, shape in shapes.items():
        n = torch.Size(shape).numel() * 2
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = shape
        size += n
    shards.append(cur)
    weight_map, gen = {}, torch.Generator().manual_seed(0)
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: torch.randn(s, generator=gen).to(torch.bfloat16) for n, s in shard.items()},
                  os.path.join(hf_dir, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
    with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(c, f)
    layer_bytes = sum(torch.Size(s).numel() * 2 for s in layer_tensors(0, c).values())
    return dict(layer_bytes=layer_bytes, shards=len(shards), largest_tensor=max(torch.Size(s).numel() * 2 for s in shapes.values()))


def dir_bytes(d: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def timed_child(cmd) -> tuple:
    """(seconds, peak RSS bytes, CPU seconds) of one child run from a fresh measuring process."""
    code = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
            f"subprocess.run({cmd!r}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(json.dumps([time.perf_counter() - t, r.ru_maxrss * 1024, r.ru_utime + r.ru_stime]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/conv_bench")
    ap.add_argument("--layers", type=int, default=16)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    c = dict(CFG, num_hidden_layers=a.layers)
    hf, mg, back = (os.path.join(a.workdir, x) for x in ("hf", "megatron", "hf_back"))
    info = write_model(hf, c)
    size = dir_bytes(hf)
    shards = sorted(os.path.join(hf, f) for f in os.listdir(hf) if f.endswith(".safetensors"))
    subprocess.run(["cat", *shards], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    t = time.perf_counter()
    subprocess.run(["cat", *shards], stdout=subprocess.DEVNULL, check=True)
    t_cat = time.perf_counter() - t
    os.makedirs(os.path.join(a.workdir, "copy"))
    t = time.perf_counter()  # reference for read + write + fsync, what any converter must do
    subprocess.run(["cp", *shards, os.path.join(a.workdir, "copy")], check=True)
    subprocess.run(["sync"], check=True)
    t_cp = time.perf_counter() - t
    shutil.rmtree(os.path.join(a.workdir, "copy"))
    tool = lambda name: [sys.executable, os.path.join(ROOT, "tools", name)]  # noqa: E731
    t_in, rss_in, cpu_in = timed_child(tool("convert_hf_to_megatron.py") + ["--hf-dir", hf, "--save", mg, "--no-progress"])
    t_out, rss_out, cpu_out = timed_child(tool("convert_megatron_to_hf.py") + ["--load", mg, "--save", back,
                                                                       "--max-shard-size", "500MB", "--no-progress"])
    tiny_hf, tiny_mg = os.path.join(a.workdir, "tiny"), os.path.join(a.workdir, "tiny_mg")
    write_model(tiny_hf, dict(c, num_hidden_layers=1, hidden_size=64, intermediate_size=128, head_dim=16,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=256))
    t_base, rss_base, cpu_base = timed_child(tool("convert_hf_to_megatron.py") + ["--hf-dir", tiny_hf, "--save", tiny_mg, "--no-progress"])
    gb = 1e9
    res = dict(model_bytes=size, layers=a.layers, layer_bytes=info["layer_bytes"], shard_bytes=SHARD_BYTES,
               cat_s=t_cat, cat_GBps=size / t_cat / gb, cp_sync_s=t_cp, cp_sync_GBps=size / t_cp / gb,
               hf_to_megatron_cpu_s=cpu_in, megatron_to_hf_cpu_s=cpu_out,
               ratio_in_vs_cp=t_cp / t_in, ratio_out_vs_cp=t_cp / t_out,
               hf_to_megatron_s=t_in, hf_to_megatron_GBps=size / t_in / gb, ratio_in=t_cat / t_in,
               megatron_to_hf_s=t_out, megatron_to_hf_GBps=size / t_out / gb, ratio_out=t_cat / t_out,
               rss_hf_to_megatron=rss_in, rss_megatron_to_hf=rss_out, rss_baseline_tiny=rss_base,
               tiny_model_s=t_base, tiny_model_cpu_s=cpu_base,
               rss_budget_layer_plus_shard=info["layer_bytes"] + SHARD_BYTES)
    print(json.dumps(res, indent=2))
    shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
