"""One typed micro-batch: the rows the model reads and every per-row/per-token input of the loss.

``Batch`` replaces the dict whose keys used to be spelled in several modules. It knows its fields
(``PER_TOKEN``: ``[B, T]``, sharded by context parallelism; ``PER_ROW``: ``[B]``), moves itself to
a device once (``to``), selects rows (``select``), cuts itself into micro-batches (``split``),
joins (``Batch.cat``) and gives each context-parallel rank its share of every token
(``cp_shard``; ``cp_unshard`` puts per-token tensors back together). The step's global
normalizers are not part of it: they travel beside it (``LossHead.attach_normalizers``).

Context-parallel layout (megatron's load balancing for causal attention): the sequence is cut
into 2·CP equal chunks and rank r holds chunks r and 2·CP−1−r, concatenated, so every rank
gets the same amount of attention work. Sharding first records the whole-row response lengths
(``response_lengths``) so seq-mean aggregations divide by the whole row, not the shard.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

#: fields holding one value per token ([B, T]); ``advantages`` is per-token only for REINFORCE++
PER_TOKEN = ("tokens", "labels", "position_ids", "response_mask", "old_logprobs", "ref_logprobs",
             "old_entropy")
#: fields holding one value per row ([B])
PER_ROW = ("is_demo", "on_policy_weight", "demo_rl_weight", "sft_weight", "response_lengths",
           "rewards", "prompt_index")


@dataclass
class Batch:
    """Rows of one (micro-)batch; ``B`` rows of ``T`` positions. Optional fields are None when
    the run does not use them."""

    tokens: torch.Tensor
    """[B, T] long: model input ids."""
    labels: torch.Tensor
    """[B, T] long: next-token ids (``tokens`` shifted by one)."""
    position_ids: torch.Tensor
    """[B, T] long: positions of ``tokens``."""
    response_mask: torch.Tensor
    """[B, T] float 0/1: label positions that enter the loss (response or demonstration tokens)."""
    is_demo: Optional[torch.Tensor] = None
    """[B] bool: demonstration rows (SFT / off-policy terms); None = no demonstration."""
    old_logprobs: Optional[torch.Tensor] = None
    """[B, T] float: log π_old of each label (rollout engine or recomputed); 0 on demo rows."""
    advantages: Optional[torch.Tensor] = None
    """[B] or [B, T] float: from ``compute_advantages``."""
    ref_logprobs: Optional[torch.Tensor] = None
    """[B, T] float: log-probs of the frozen reference policy (KL terms)."""
    old_entropy: Optional[torch.Tensor] = None
    """[B, T] float: π_old's token entropy (EGSPO gate, SRFT weights)."""
    on_policy_weight: Optional[torch.Tensor] = None
    """[B] float: per-row weight of the on-policy RL term (HPT gate)."""
    demo_rl_weight: Optional[torch.Tensor] = None
    """[B] float: per-row weight of the demonstration RL term (HPT soft mode)."""
    sft_weight: Optional[torch.Tensor] = None
    """[B] float: per-row weight of the SFT term (HPT gate)."""
    response_lengths: Optional[torch.Tensor] = None
    """[B] float: valid tokens of each whole row; set by ``cp_shard`` (None = count the mask)."""
    rewards: Optional[torch.Tensor] = None
    """[B] float: outcome reward of each row (SRFT's ``srft_correct`` weights; 0 on demo rows)."""
    prompt_index: Optional[torch.Tensor] = None
    """[B] long: the row's prompt within its rollout batch (whole-prompt mini-batches)."""
    mu: Optional[float] = None
    """CHORD/EGSPO mixing weight μ of this optimizer step (a scalar, not per row)."""
    cu_seqlens: Optional[torch.Tensor] = None
    """[B + 1] int32: row boundaries of a packed (THD) micro-batch, whose tokens / labels /
    position_ids are one stream [1, Σ lengths] while the other fields stay [B, T]
    (training/packing.py); None for a padded micro-batch."""

    # ------------------------------------------------------------------ fields
    def tensors(self) -> dict:
        """{name: tensor} of the fields that are set (``mu`` excluded)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def replace(self, **changes) -> "Batch":
        return dataclasses.replace(self, **changes)

    def _map(self, fn_token, fn_row) -> "Batch":
        out = {}
        for name, t in self.tensors().items():
            out[name] = fn_token(t) if _is_per_token(name, t) else fn_row(t)
        return self.replace(**out)

    # ------------------------------------------------------------------ device
    def to(self, device, non_blocking: bool = False) -> "Batch":
        """Every tensor on ``device`` (one copy each; dtypes kept)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking),
                         lambda t: t.to(device, non_blocking=non_blocking))

    # ------------------------------------------------------------------ rows
    def select(self, rows: Union[slice, Sequence[int], torch.Tensor]) -> "Batch":
        """The rows ``rows`` (a slice, index list or index tensor) of every field."""
        if not isinstance(rows, slice):
            rows = torch.as_tensor(rows, dtype=torch.long)
        return self._map(lambda t: t[rows.to(t.device) if isinstance(rows, torch.Tensor) else rows],
                         lambda t: t[rows.to(t.device) if isinstance(rows, torch.Tensor) else rows])

    def split(self, sizes: Union[int, Sequence[int]]) -> List["Batch"]:
        """Consecutive micro-batches: of ``sizes`` rows each (an int; the last may be shorter)
        or of the given row counts (a list summing to ``num_rows``)."""
        n = self.num_rows
        if isinstance(sizes, int):
            if sizes < 1:
                raise ValueError(f"Batch.split: micro-batch size must be >= 1, got {sizes}")
            sizes = [min(sizes, n - lo) for lo in range(0, n, sizes)]
        if sum(sizes) != n:
            raise ValueError(f"Batch.split: sizes {list(sizes)} sum to {sum(sizes)}, "
                             f"the batch has {n} rows")
        out, lo = [], 0
        for size in sizes:
            out.append(self.select(slice(lo, lo + size)))
            lo += size
        return out

    @staticmethod
    def cat(batches: Sequence["Batch"]) -> "Batch":
        """Rows of ``batches`` one after the other (the same fields must be set in each)."""
        first = batches[0]
        names = set(first.tensors())
        for i, b in enumerate(batches):
            if set(b.tensors()) != names:
                raise ValueError(f"Batch.cat: batch {i} has fields {sorted(b.tensors())}, "
                                 f"batch 0 has {sorted(names)}")
        return first.replace(**{k: torch.cat([getattr(b, k) for b in batches]) for k in names})

    # ------------------------------------------------------------------ context parallel
    def cp_shard(self, cp_rank: int, cp_size: int) -> "Batch":
        """This CP rank's tokens of every per-token field (chunks r and 2·CP−1−r of 2·CP);
        per-row fields are kept, and ``response_lengths`` is set to the whole-row lengths first."""
        if cp_size == 1:
            return self
        lengths = self.response_lengths
        if lengths is None:
            lengths = self.response_mask.sum(-1).to(torch.float32)
        shard = self.replace(response_lengths=lengths)
        return shard._map(lambda t: cp_shard(t, cp_rank, cp_size), lambda t: t)

    def loss_extras(self) -> dict:
        """The per-row/per-token inputs of ``policy_loss`` beyond log-probs (its extras)."""
        extras = {k: getattr(self, k) for k in ("is_demo", "ref_logprobs", "old_entropy",
                                                "on_policy_weight", "demo_rl_weight",
                                                "sft_weight", "response_lengths", "rewards")
                  if getattr(self, k) is not None}
        if self.mu is not None:
            extras["mu"] = self.mu
        return extras


def _is_per_token(name: str, t: torch.Tensor) -> bool:
    return name in PER_TOKEN or (name == "advantages" and t.dim() == 2)


def _cp_chunk_index(cp_rank: int, cp_size: int) -> List[int]:
    return [cp_rank, 2 * cp_size - 1 - cp_rank]


def cp_shard(t: torch.Tensor, cp_rank: int, cp_size: int, dim: int = 1) -> torch.Tensor:
    """Rank ``cp_rank``'s part of ``t`` along ``dim``: chunks r and 2·CP−1−r of 2·CP equal
    chunks (megatron's ``get_batch_on_this_cp_rank`` layout). The length must divide by 2·CP."""
    if cp_size == 1:
        return t
    n = t.shape[dim]
    if n % (2 * cp_size):
        raise ValueError(f"context parallel {cp_size}: sequence length {n} must be a multiple "
                         f"of 2 x CP = {2 * cp_size} (--seq-length)")
    chunks = t.chunk(2 * cp_size, dim=dim)
    return torch.cat([chunks[i] for i in _cp_chunk_index(cp_rank, cp_size)], dim=dim)


def cp_unshard(shards: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Inverse of ``cp_shard``: the shards of ranks 0..CP−1 (in rank order) -> the whole tensor."""
    cp_size = len(shards)
    if cp_size == 1:
        return shards[0]
    chunks = [None] * (2 * cp_size)
    for r, s in enumerate(shards):
        lo, hi = s.chunk(2, dim=dim)
        first, second = _cp_chunk_index(r, cp_size)
        chunks[first], chunks[second] = lo, hi
    return torch.cat(chunks, dim=dim)
