"""Token-level divergences between the student and the teacher (Phase 2, ../shared/SDZERO.md).

All functions take aligned positions: row i of the student and row i of the teacher predict the same
token of the student's response y. Positions are flattened to [N, ...]; `mask` [N] selects the response
tokens. Each returns (mean over masked tokens, per-token values [N]); the per-token values are what the
self-localization heat-map shows. The teacher side is never differentiated.

- `topk_divergence`: on the teacher's top-k tokens, both distributions renormalised over that support
  (official code: k=64, 0.5 * KL(T||S) + 0.5 * KL(S||T)). Only [N, k] values are ever upcast to float32.
  `topk_divergence_from_hidden` is the same quantity from hidden states: the teacher's logits are made a
  chunk at a time without gradient, and the student's only at the k support tokens, so the student never
  has an [N, V] logits tensor at all (the trainer uses this one).
- `full_vocab_divergence`: over the whole vocabulary, from hidden states through the LM head in chunks of
  rows. Each chunk runs under activation checkpointing, so neither the forward nor the backward keeps a
  float32 [N, V] tensor: the peak is one chunk's [chunk, V].
- `token_logprobs_from_hidden`: log p(target) per row, from hidden states in checkpointed chunks.
- `sampled_token_reverse_kl`: the single-sample estimate log S(y_t) - log T(y_t) at the token the student
  sampled, trained as a score-function loss; in expectation over y_t ~ S its gradient is the gradient of
  the dense reverse KL(S||T) at that position. Rollouts sampled at a temperature T != 1 come from another
  distribution q = softmax(z / T): each term is then importance-weighted by S(y_t) / q(y_t), without which
  the estimate is biased (its expected gradient can point the other way).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Kind = Literal["forward", "reverse", "mixed", "jsd"]


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def _divergence(s: torch.Tensor, t: torch.Tensor, kind: Kind, beta: float) -> torch.Tensor:
    """Per-row divergence between log-distributions s (student) and t (teacher) over the last dim.

    forward = KL(T||S); reverse = KL(S||T); mixed = beta * forward + (1 - beta) * reverse;
    jsd = beta * KL(T||M) + (1 - beta) * KL(S||M), M = beta * T + (1 - beta) * S (generalised JSD).
    """
    if kind == "forward":
        return (t.exp() * (t - s)).sum(-1)
    if kind == "reverse":
        return (s.exp() * (s - t)).sum(-1)
    if kind == "mixed":
        return beta * (t.exp() * (t - s)).sum(-1) + (1 - beta) * (s.exp() * (s - t)).sum(-1)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError("jsd needs 0 < beta < 1")
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
        return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    raise ValueError(f"unknown divergence kind {kind!r}: forward, reverse, mixed or jsd")


def _by_chunks(fn, chunk_size: int, rows: tuple[torch.Tensor, ...],
               trainable: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """fn over chunks of `rows` (tensors sharing their first dimension), concatenated. Where a gradient is
    needed, each chunk runs under activation checkpointing: its [chunk, V] intermediates are recomputed in
    the backward pass instead of being kept."""
    pieces = []
    for lo in range(0, rows[0].shape[0], chunk_size):
        part = [r[lo : lo + chunk_size] for r in rows]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (*part, *trainable)):
            pieces.append(checkpoint(fn, *part, use_reentrant=False))
        else:
            pieces.append(fn(*part))
    return torch.cat(pieces)


def topk_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                    k: int = 64, kind: Kind = "mixed", beta: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Divergence on the teacher's top-k support. Logits: [N, V] (any float dtype); mask: [N]."""
    teacher_logits = teacher_logits.detach()
    k = min(k, teacher_logits.shape[-1])
    t_top, idx = teacher_logits.topk(k, dim=-1)
    s_top = student_logits.gather(-1, idx)
    t = F.log_softmax(t_top.float(), dim=-1)  # renormalised over the support
    s = F.log_softmax(s_top.float(), dim=-1)
    per_token = _divergence(s, t, kind, beta)
    return _masked_mean(per_token, mask), per_token


def topk_divergence_from_hidden(student_hidden: torch.Tensor, student_head: torch.Tensor,
                                teacher_hidden: torch.Tensor, teacher_head: torch.Tensor,
                                mask: torch.Tensor | None = None, k: int = 64, kind: Kind = "mixed", beta: float = 0.5,
                                chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """`topk_divergence` from final hidden states [N, H] and LM-head weights [V, H], in chunks of rows.

    Per chunk: teacher logits [c, V] without gradient -> top-k ids; student logits only at those ids
    ([c, k], from the k gathered head rows), recomputed in the backward pass instead of being kept.
    """
    teacher_hidden, teacher_head = teacher_hidden.detach(), teacher_head.detach()
    k = min(k, teacher_head.shape[0])

    def chunk_div(h_s: torch.Tensor, idx: torch.Tensor, t_top: torch.Tensor) -> torch.Tensor:
        s_top = torch.einsum("ch,ckh->ck", h_s, student_head[idx])
        return _divergence(F.log_softmax(s_top.float(), dim=-1), F.log_softmax(t_top.float(), dim=-1), kind, beta)

    with torch.no_grad():  # the teacher's support: only [N, k] is kept
        tops = [(h_t @ teacher_head.T).topk(k, dim=-1) for h_t in teacher_hidden.split(chunk_size)]
    t_top, idx = torch.cat([t.values for t in tops]), torch.cat([t.indices for t in tops])
    per_token = _by_chunks(chunk_div, chunk_size, (student_hidden, idx, t_top), (student_head,))
    return _masked_mean(per_token, mask), per_token


def token_logprobs_from_hidden(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor,
                               chunk_size: int = 1024, temperature: float = 1.0) -> torch.Tensor:
    """log p(targets[i]) under softmax(hidden[i] @ head.T / temperature), float32, [N]; chunked and
    checkpointed."""

    def chunk_lp(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = (h @ head.T).float() / temperature
        return logits.gather(-1, t[:, None]).squeeze(-1) - logits.logsumexp(-1)

    return _by_chunks(chunk_lp, chunk_size, (hidden, targets), (head,))


def full_vocab_divergence(student_hidden: torch.Tensor, student_head: torch.Tensor, teacher_hidden: torch.Tensor,
                          teacher_head: torch.Tensor, mask: torch.Tensor | None = None, kind: Kind = "reverse",
                          beta: float = 0.5, chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-vocabulary divergence from final hidden states [N, H] and LM-head weights [V, H], in chunks.

    The float32 logits of a chunk are recomputed during the backward pass instead of being kept, so the
    memory cost is one chunk's [chunk_size, V], whatever N is.
    """
    teacher_hidden, teacher_head = teacher_hidden.detach(), teacher_head.detach()

    def chunk_div(h_s: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
        s = F.log_softmax((h_s @ student_head.T).float(), dim=-1)
        with torch.no_grad():
            t = F.log_softmax((h_t @ teacher_head.T).float(), dim=-1)
        return _divergence(s, t, kind, beta)

    per_token = _by_chunks(chunk_div, chunk_size, (student_hidden, teacher_hidden), (student_head,))
    return _masked_mean(per_token, mask), per_token


def sampled_token_reverse_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor,
                             mask: torch.Tensor | None = None,
                             sampling_logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse KL estimated at the sampled tokens: inputs are log S(y_t) and log T(y_t), shape [N].

    Returns (loss, per-token estimate). The loss is w * sg(log S - log T) * log S, whose gradient is, in
    expectation over the sampled y_t, the gradient of KL(S||T) at each position (the score-function identity:
    E_S[grad log S] = 0). w = 1 when y_t ~ S; when y_t was drawn from another distribution q (the student at a
    sampling temperature != 1), pass `sampling_logprobs` = log q(y_t) and w = S(y_t) / q(y_t) (no gradient).
    The loss's value is not the KL; the per-token estimate w * (log S - log T) is, in expectation.
    """
    estimate = (student_logprobs - teacher_logprobs.detach()).detach()
    if sampling_logprobs is not None:
        estimate = estimate * (student_logprobs.detach() - sampling_logprobs.detach()).exp()
    loss_per_token = estimate * student_logprobs
    return _masked_mean(loss_per_token, mask), estimate
