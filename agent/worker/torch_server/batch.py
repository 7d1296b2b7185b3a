"""The running batch: one left-padded KV cache shared by every sequence being decoded.

Layout: row i of every layer's K/V tensor ([rows, kv_heads, columns, head_dim]) holds sequence i's tokens in its
last `length_i` columns; the first `pad_i` columns are padding that the attention mask hides. A decode step appends
one column to every row, so the shared cache grows like a plain batched generate() would.

- join: sequences prefilled together (left-padded to the longest of them) are stacked in: the narrower side (the
  new rows or the old rows) gets zero columns on the left, then columns that are padding in every row are cut.
- leave: its row is dropped, then columns that are padding in every remaining row are cut away.
- step inputs: each row's last sampled token, its own position (its length, padding not counted) and, only when
  some row is padded, an additive 4-D mask [rows, 1, 1, columns + 1]; without padding no mask is passed, so a batch
  of one runs exactly the same computation as model.generate().

Rebuilding on join/leave costs one copy of the cache; decode steps themselves copy nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agent.worker.torch_server.kvcache import KV, build_cache, cache_layers
from agent.worker.torch_server.sequence import Seq


@dataclass
class StepInputs:
    input_ids: torch.Tensor               # [rows, 1]
    position_ids: torch.Tensor | None     # [rows, 1], None when no row is padded
    attention_mask: torch.Tensor | None   # [rows, 1, 1, columns + 1] additive, None when no row is padded


@dataclass
class RunningBatch:
    rows: list[Seq] = field(default_factory=list)
    pads: list[int] = field(default_factory=list)
    columns: int = 0
    cache: object | None = None           # a transformers DynamicCache

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def used_tokens(self) -> int:
        return sum(self.columns - p for p in self.pads)

    @property
    def padded_tokens(self) -> int:
        return len(self.rows) * self.columns

    @property
    def reserved_tokens(self) -> int:
        return sum(s.reserve for s in self.rows)

    def clear(self) -> list[Seq]:
        rows = self.rows
        self.rows, self.pads, self.columns, self.cache = [], [], 0, None
        return rows

    def join(self, seqs: list[Seq], kv: list[KV], pads: list[int]) -> None:
        """Add sequences prefilled together (rows of `kv`, left-padded by `pads`); their caches cover all their
        tokens but the last sampled one."""
        if not seqs:
            return
        width = kv[0][0].shape[2]
        if self.cache is None:
            self.rows, self.pads, self.columns = list(seqs), list(pads), width
            self.cache = build_cache(kv)
        else:
            old = cache_layers(self.cache)
            total = max(self.columns, width)
            grow_old, grow_new = total - self.columns, total - width
            merged: list[KV] = []
            for (ok, ov), (nk, nv) in zip(old, kv, strict=True):
                merged.append((torch.cat([_left_pad(ok, grow_old), _left_pad(nk, grow_new)], dim=0),
                               torch.cat([_left_pad(ov, grow_old), _left_pad(nv, grow_new)], dim=0)))
            self.pads = [p + grow_old for p in self.pads] + [p + grow_new for p in pads]
            self.rows += seqs
            self.columns = total
            self.cache = build_cache(merged)
        self._trim()

    def _trim(self) -> None:
        cut = min(self.pads)
        if cut:
            self.cache = build_cache([(k[:, :, cut:, :], v[:, :, cut:, :]) for k, v in cache_layers(self.cache)])
            self.pads = [p - cut for p in self.pads]
            self.columns -= cut

    def leave(self, gone: list[Seq]) -> None:
        """Drop finished, cancelled or preempted sequences and the columns no remaining row needs."""
        if not gone:
            return
        keep = [i for i, s in enumerate(self.rows) if s not in gone]
        if not keep:
            self.clear()
            return
        cut = min(self.pads[i] for i in keep)
        index = torch.tensor(keep, dtype=torch.long)
        layers = []
        for k, v in cache_layers(self.cache):
            idx = index.to(k.device)
            layers.append((k.index_select(0, idx)[:, :, cut:, :], v.index_select(0, idx)[:, :, cut:, :]))
        self.rows = [self.rows[i] for i in keep]
        self.pads = [self.pads[i] - cut for i in keep]
        self.columns -= cut
        self.cache = build_cache(layers)

    def step_inputs(self, device: torch.device, dtype: torch.dtype) -> StepInputs:
        ids = torch.tensor([[s.generated[-1]] for s in self.rows], dtype=torch.long, device=device)
        if not any(self.pads):
            return StepInputs(ids, None, None)
        positions = torch.tensor([[self.columns - p] for p in self.pads], dtype=torch.long, device=device)
        cols = torch.arange(self.columns + 1, device=device)
        hidden = cols.unsqueeze(0) < torch.tensor(self.pads, device=device).unsqueeze(1)   # [rows, columns + 1]
        mask = torch.zeros(hidden.shape, dtype=dtype, device=device)
        mask.masked_fill_(hidden, torch.finfo(dtype).min)
        return StepInputs(ids, positions, mask[:, None, None, :])

    def stepped(self) -> None:
        """Account for the column the model just appended to every row."""
        self.columns += 1


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[2] = n
    return torch.cat([t.new_zeros(shape), t], dim=2)


def prefill_inputs(contexts: list[list[int]], device: torch.device, dtype: torch.dtype
                   ) -> tuple[StepInputs, list[int]]:
    """Inputs to prefill several sequences in one forward pass, left-padded to the longest, and each row's
    padding. One sequence gets no mask and no positions: exactly what generate() computes for it."""
    width = max(len(c) for c in contexts)
    pads = [width - len(c) for c in contexts]
    ids = torch.tensor([[0] * p + c for p, c in zip(pads, contexts, strict=True)], dtype=torch.long, device=device)
    if not any(pads):
        return StepInputs(ids, None, None), pads
    pad = torch.tensor(pads, device=device)
    cols = torch.arange(width, device=device)
    positions = (cols.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)
    # key j is visible from query i when j <= i (causal) and j is not padding; a padding query sees nothing useful,
    # but a finite minimum (not -inf) keeps its softmax free of NaN
    visible = (cols.unsqueeze(0) <= cols.unsqueeze(1)).unsqueeze(0) & (cols.unsqueeze(0) >= pad.unsqueeze(1)
                                                                        ).unsqueeze(1)
    mask = torch.zeros(visible.shape, dtype=dtype, device=device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return StepInputs(ids, positions, mask[:, None, :, :]), pads
