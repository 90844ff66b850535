"""The two models of on-policy self-distillation: the student, a causal LM read through its final hidden
states and LM head at given positions (`PolicyForward`, the module DDP / FSDP / DeepSpeed wrap), and its
teacher (`Teacher`: frozen, synced every N steps, or an EMA of the student).

- Everything that touches the head runs inside `PolicyForward.forward`, because sharded weights are only
  gathered during a forward. No [batch, length, vocab] logits tensor is built: the divergence is taken
  chunk by chunk from hidden states (`sdzero.losses`). Models whose logits are not `hidden @ head` (logit
  soft-capping, a head bias) are refused (`check_head_gives_logits`).
- The divergence's settings are bound once, when the module is built (`DivergenceSpec`).
- A right-padded batch runs without its attention mask: causal attention already keeps every real token
  from the pads after it, and only real tokens' positions are read, so the result is the same; without a
  mask SDPA takes its fast causal path instead of a masked one (most Phase-2 batches are padded: responses
  differ in length).
- The teacher keeps fp32 weights and runs under the student's autocast, so a teacher equal to the student
  gives exactly the student's distributions. With LoRA there is no second copy of the weights: the frozen
  teacher is the base model (adapters off), and sync / EMA teachers keep only their own copy of the adapter
  weights, swapped in for the teacher pass. An EMA of adapters averages A and B separately: its B_T A_T is
  not the EMA of the student's B A (that would need a full-rank delta per layer, which LoRA avoids storing).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from sdzero.errors import SDZeroError

DIVERGENCES = {"topk": ("forward", "reverse", "mixed"), "full": ("forward", "reverse", "mixed", "jsd"),
               "sampled": ("reverse",)}


@dataclass(frozen=True)
class DivergenceSpec:
    """Which token-level divergence the student pass returns (see DistillConfig's help for each field)."""

    divergence: str = "topk"
    kind: str = "mixed"
    beta: float = 0.5
    topk: int = 64
    chunk_size: int = 1024
    sample_temperature: float = 1.0  # the rollouts' temperature (divergence="sampled" importance-weights to it)


class PolicyForward(torch.nn.Module):
    """A causal LM read at given positions. role="teacher": (hidden [N, H], head [V, H]) without gradient;
    role="student": (per-token divergence [N] against given teacher outputs, the student's log-prob of each
    target without gradient, or None when no targets are given); role="selfloc": per-token full-vocabulary
    reverse KL, no gradient (for the heat-maps)."""

    def __init__(self, lm: Any, clone_head: bool = False, spec: DivergenceSpec = DivergenceSpec()):
        super().__init__()
        self.lm, self.spec = lm, spec
        self.clone_head = clone_head  # sharded weights: keep a full copy of the head once out of forward()

    @property
    def is_gradient_checkpointing(self) -> bool:  # read by TRL's unwrap_model_for_generation
        for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5 / 4 names
            if hasattr(type(self.lm), name) or hasattr(self.lm, name):
                return bool(getattr(self.lm, name))
        return False

    # TRL's unwrap_model_for_generation turns checkpointing off for generation and back on after.
    def gradient_checkpointing_disable(self) -> None:
        self.lm.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or
                                              {"use_reentrant": False})

    def forward(self, input_ids, attention_mask, rows, cols, role="student", teacher_hidden=None,
                teacher_head=None, targets=None):
        """role="student" returns (per-token divergence [N], log p_student(target) [N] without gradient)."""
        from sdzero import losses

        spec = self.spec
        divergence, kind, beta, topk, chunk_size = spec.divergence, spec.kind, spec.beta, spec.topk, spec.chunk_size
        if attention_mask is not None and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
            attention_mask = None  # right padding only: nothing to mask that causality does not (docstring above)
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                       use_cache=False).last_hidden_state[rows, cols]
        head = self.lm.get_output_embeddings().weight
        if role == "teacher":
            return hidden.detach(), (head.detach().clone() if self.clone_head else head.detach())
        if role == "selfloc":
            return losses.full_vocab_divergence(hidden, head, teacher_hidden, teacher_head, kind="reverse",
                                                chunk_size=chunk_size)[1]
        if divergence == "sampled":
            s_lp = losses.token_logprobs_from_hidden(hidden, head, targets, chunk_size)
            with torch.no_grad():
                t_lp = losses.token_logprobs_from_hidden(teacher_hidden, teacher_head, targets, chunk_size)
                # The rollouts came from the student at the sampling temperature: importance-weight to S.
                q_lp = None if spec.sample_temperature == 1.0 else losses.token_logprobs_from_hidden(
                    hidden, head, targets, chunk_size, temperature=spec.sample_temperature)
            _, estimate = losses.sampled_token_reverse_kl(s_lp, t_lp, sampling_logprobs=q_lp)
            surrogate = s_lp * estimate  # its gradient is the score-function gradient of KL(S||T)
            return estimate + surrogate - surrogate.detach(), s_lp.detach()  # value: the KL estimate
        if divergence == "topk":
            per_token = losses.topk_divergence_from_hidden(hidden, head, teacher_hidden, teacher_head, k=topk,
                                                           kind=kind, beta=beta, chunk_size=chunk_size)[1]
        else:
            per_token = losses.full_vocab_divergence(hidden, head, teacher_hidden, teacher_head, kind=kind,
                                                     beta=beta, chunk_size=chunk_size)[1]
        if targets is None:
            return per_token, None
        with torch.no_grad():  # for the answer-token log: what the student gives its own tokens
            s_lp = losses.token_logprobs_from_hidden(hidden, head, targets, chunk_size)
        return per_token, s_lp


def check_head_gives_logits(lm: Any, tokenizer: Any) -> None:
    """The trainer reads hidden @ head; refuse models whose logits are something else."""
    ids = torch.tensor([tokenizer("check", add_special_tokens=False)["input_ids"][:4] or [0]])
    device = next(lm.parameters()).device
    with torch.no_grad():
        logits = lm(input_ids=ids.to(device)).logits[0].float()
        hidden = lm.get_decoder()(input_ids=ids.to(device)).last_hidden_state[0]
        mine = (hidden @ lm.get_output_embeddings().weight.T).float()
    if not torch.allclose(logits, mine, atol=1e-3 * max(1.0, logits.abs().max().item())):
        raise SDZeroError(f"{type(lm).__name__}'s logits are not final hidden state @ LM head (logit soft-capping or "
                          "a head bias?); sdzero distill reads them that way and does not support this model yet")


# --- teachers ---------------------------------------------------------------------------------------------

def _lora_params(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


class Teacher:
    """frozen / sync / EMA teacher. It never trains: no gradient, eval mode (no dropout)."""

    def __init__(self, kind: str, student_lm: Any, use_lora: bool, ema_rate: float, sync_steps: int):
        self.kind, self.use_lora, self.ema_rate, self.sync_steps = kind, use_lora, ema_rate, sync_steps
        self.module: Any = None  # a separate PolicyForward (full fine-tuning)
        self.adapter: dict[str, Any] = {}  # the teacher's adapter weights (LoRA + sync/ema)
        if use_lora:
            if kind != "frozen":
                self.adapter = {n: p.detach().clone() for n, p in _lora_params(student_lm).items()}
        else:
            lm = copy.deepcopy(student_lm).eval()
            lm.requires_grad_(False)
            self.module = PolicyForward(lm).eval()

    @contextmanager
    def weights(self, student: Any, student_unwrapped: Any) -> Iterator[Any]:
        """The module to run the teacher pass through (the student's own module under LoRA)."""
        if self.module is not None:
            yield self.module
            return
        lm = student_unwrapped.lm
        was_training = lm.training
        lm.eval()
        try:
            if self.kind == "frozen":
                with lm.disable_adapter():
                    yield student
            else:
                params = _lora_params(lm)
                saved = {n: p.detach().clone() for n, p in params.items()}
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(self.adapter[n])
                try:
                    yield student
                finally:
                    with torch.no_grad():
                        for n, p in params.items():
                            p.copy_(saved[n])
        finally:
            lm.train(was_training)

    def update(self, student_lm: Any, step: int) -> bool:
        """After optimizer step `step` (1-based); returns whether the teacher changed."""
        if self.kind == "frozen" or (self.kind == "sync" and step % self.sync_steps):
            return False
        rate = 1.0 if self.kind == "sync" else self.ema_rate
        if self.use_lora:
            pairs = [(self.adapter[n], p) for n, p in _lora_params(student_lm).items()]
        else:
            pairs = list(zip(self.module.lm.parameters(), student_lm.parameters()))
        with torch.no_grad():
            for t, s in pairs:
                if rate >= 1.0:
                    t.copy_(s.detach())
                else:
                    t.mul_(1.0 - rate).add_(s.detach().to(t.dtype), alpha=rate)
        return True

    def state_dict(self) -> dict[str, Any]:
        if self.kind == "frozen":
            return {}  # rebuilt from the starting model
        return {"adapter": self.adapter} if self.use_lora else {"model": self.module.lm.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "adapter" in state:
            for n, t in state["adapter"].items():
                self.adapter[n].copy_(t)
        elif "model" in state:
            self.module.lm.load_state_dict(state["model"])


def pad_batch(seqs: Sequence[list[int]], positions: Sequence[list[int]], pad_id: int):
    """Right-padded ids, attention mask, and the (row, column) index of every aligned position."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols = [], []
    for i, (s, pos) in enumerate(zip(seqs, positions)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        rows += [i] * len(pos)
        cols += pos
    return ids, mask, torch.tensor(rows), torch.tensor(cols)



def prepare_sharded_teacher(module: Any, acc: Any) -> Any:
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(module, acc)
    from trl.models.utils import prepare_fsdp

    return prepare_fsdp(module, acc)
