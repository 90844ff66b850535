"""Attention for padding-free batches: each record attends to itself only, without a mask over the row.

`PackCollator` lays a batch's records end to end in one row with positions restarting at 0. transformers'
SDPA path then builds one block-diagonal mask over the whole row (T x T), computes every record against
every other and masks most of it away; with a mask it also copies the keys and values once per query head
(GQA). Here the records are gathered into a [records, longest record] batch, each row attended causally with
no mask (SDPA's fast kernel, GQA without copies), and the result is put back in the row's order: the same
attention with about `records` times less arithmetic. A record's padding sits after its last token, so
causal attention never lets a real token see it, and the padded rows' outputs are dropped.

Used by `training.train_records` for padding-free batches (`packed_attention(model)`), whose rows carry no
attention mask and no cache: the record-by-record path takes a row's records from its positions and ignores
the mask transformers builds, so it assumes the records are the row's only structure. Anything it can see
is something else (a batch of several rows, a single record, a sliding window, a position bias, no position
ids reaching the attention) goes to transformers' own SDPA function with that mask, unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

NAME = "sdzero_packed_sdpa"


def record_layout(position_ids: Any) -> tuple[Any, Any] | None:
    """For a [1, T] row of records whose positions restart at each record: (index [R, L] into the row, valid
    [R, L]) with R records and L the longest; None when the row holds fewer than two records."""
    import torch

    pos = position_ids[0]
    new = torch.ones_like(pos, dtype=torch.bool)
    new[1:] = pos[1:] != pos[:-1] + 1  # a record starts wherever the positions do not go on by one
    starts = new.nonzero().squeeze(-1)
    if starts.numel() < 2:
        return None
    lengths = torch.diff(starts, append=torch.tensor([pos.numel()], device=pos.device))
    offsets = torch.arange(int(lengths.max()), device=pos.device)
    valid = offsets[None, :] < lengths[:, None]
    index = torch.where(valid, starts[:, None] + offsets[None, :], 0)
    return index, valid


def packed_sdpa_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                        scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[Any, None]:
    """An attention function with transformers' signature (query [1, H, T, d], key/value [1, Hkv, T, d]);
    returns ([1, T, H, d], None) like its SDPA function."""
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    layout = None
    if (query.shape[0] == 1 and position_ids is not None and position_ids.dim() == 2
            and query.shape[2] == key.shape[2] > 1 and is_causal is not False and getattr(module, "is_causal", True)
            and all(kwargs.get(k) is None for k in ("softcap", "position_bias", "sliding_window"))
            and getattr(module, "sliding_window", None) is None):  # models pass a window either way
        layout = record_layout(position_ids)
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    index, valid = layout

    def by_record(x: Any) -> Any:  # [1, heads, T, d] -> [R, heads, L, d]
        return x[0][:, index].transpose(0, 1)

    out = F.scaled_dot_product_attention(by_record(query), by_record(key), by_record(value), dropout_p=dropout,
                                         is_causal=True, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2)[valid][None], None  # [R, L, H, d] -> the row's T tokens in order -> [1, T, H, d]


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_forward)
    # transformers still builds SDPA's mask: the record-by-record path ignores it, the fallback needs it
    AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def packed_attention(model: Any) -> Iterator[bool]:
    """While inside, a model on transformers' SDPA attention uses `packed_sdpa_forward`; yields whether it
    does (other attention implementations are left as they are). Backward passes must run inside too (a
    checkpointed layer recomputes with the attention it ran). The model's own setting is restored after, so
    nothing generated later sees it; saved configs never hold it (transformers does not write it)."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before != "sdpa" or not hasattr(model, "set_attn_implementation"):
        yield False
        return
    _register()
    model.set_attn_implementation(NAME)  # a model that cannot switch keeps its own, with a warning
    try:
        yield config._attn_implementation == NAME
    finally:
        model.set_attn_implementation(before)
