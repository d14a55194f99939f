"""Rollouts: one engine protocol, the embedded engine (the training GPTModel decodes with a KV
cache) and the colocated vLLM engine (lazy import). Weight export to engines: ``weights.py``."""
from megatron_hpt.rollout.engines import ENGINE_NAMES, build_engine, check_engine_available
from megatron_hpt.rollout.protocol import (FINISH_REASONS, RolloutEngine, RolloutSample,
                                           SamplingParams, WeightBucket, WeightStream)

__all__ = ["ENGINE_NAMES", "FINISH_REASONS", "RolloutEngine", "RolloutSample", "SamplingParams",
           "WeightBucket", "WeightStream", "build_engine", "check_engine_available"]
