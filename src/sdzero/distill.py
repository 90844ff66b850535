"""`sdzero distill`: Phase 2, on-policy self-distillation (../shared/SDZERO.md).

One loop, one optimizer step per iteration:
  1. the step's questions: a seeded permutation of the Phase-2 set, each process taking its share;
  2. the student samples `samples_per_question` responses per question (seeded by step and process);
  3. the verifier gives r, and r picks the control phrase P_r;
  4. the teacher (no gradient) reads chat(x) + y + sep P_r sep + y, the student chat(x) + y, and their
     rows over y are aligned token for token (`sdzero.alignment`);
  5. a token-level divergence (`sdzero.losses`) averaged over every response token of the global batch;
  6. one AdamW step; then the teacher is synced (every N steps), moved by EMA, or left frozen.

Simplifications, stated up front:
- Every response token weighs the same (a token mean over the whole global batch, the same with 1 or 8
  processes); no reward weighting, no clipping, no importance ratio: a step's rollouts are used for exactly
  one optimizer step, so they are on-policy.
- Both models are read through their final hidden states and the LM head, never a [batch, length, vocab]
  logits tensor. Everything that touches the head runs inside `PolicyForward.forward`, the module that
  DDP / FSDP / DeepSpeed wrap, because sharded weights are only gathered during a forward. Models whose
  logits are not `hidden @ head` (logit soft-capping, a head bias) are refused at start.
- The teacher is the starting model (frozen), or a copy the student's weights are pasted into every N
  steps (sync), or an EMA of the student: after each step teacher <- (1 - ema_rate) * teacher +
  ema_rate * student (ema_rate = how much of the student moves in; 0 would be frozen, 1 a sync every step).
  With LoRA there is no second copy of the weights: the frozen teacher is the base model (adapters off),
  and sync / EMA teachers keep only their own copy of the adapter weights, swapped in for the teacher pass.
  An EMA of adapters averages A and B separately: its weights B_T A_T are not the EMA of the student's B A
  (that would need a full-rank delta per layer, which is what LoRA avoids storing).
- The teacher keeps fp32 weights and runs under the student's autocast, so a teacher equal to the student
  gives exactly the student's distributions.
- Generation uses the student's current weights through the `Generator` interface (transformers, or vLLM
  when installed and asked for).
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from sdzero.errors import SDZeroError, require_at_least
from sdzero.files import atomic_write_json, atomic_write_text
from sdzero.runfolder import write_history

DIVERGENCES = {"topk": ("forward", "reverse", "mixed"), "full": ("forward", "reverse", "mixed", "jsd"),
               "sampled": ("reverse",)}


@dataclass
class DistillConfig:
    output_dir: str = field(default="outputs/distill", metadata={
        "help": "Checkpoints go to OUTPUT_DIR/checkpoints, the trained model to OUTPUT_DIR/model, per-step logs "
                "to OUTPUT_DIR/log.jsonl, self-localization heat-maps to OUTPUT_DIR/selfloc."})
    max_steps: int = field(default=50, metadata={"help": "Optimizer steps."})
    questions_per_step: int = field(default=32, metadata={
        "help": "Questions per step across all processes (official code: 128); must divide by the process count."})
    samples_per_question: int = field(default=1, metadata={"help": "Student responses per question (paper: 1)."})
    micro_batch_size: int = field(default=8, metadata={
        "help": "Responses per forward/backward pass; a step accumulates gradients over its micro-batches."})
    divergence: str = field(default="topk", metadata={
        "help": "topk: on the teacher's top-k tokens, renormalised (official code); full: whole vocabulary "
                "(paper Eq. 4), computed in chunks; sampled: reverse KL estimated at the sampled token."})
    divergence_kind: str = field(default="mixed", metadata={
        "help": "forward = KL(T||S), reverse = KL(S||T), mixed = beta * forward + (1 - beta) * reverse (topk/full), "
                "jsd (full only). 'sampled' is always reverse."})
    beta: float = field(default=0.5, metadata={"help": "Weight of the forward KL in mixed / of T in jsd "
                                                       "(official code: mixed, 0.5)."})
    topk: int = field(default=64, metadata={"help": "Support size for divergence=topk (official code: 64)."})
    loss_chunk_size: int = field(default=256, metadata={"help": "Response tokens per chunk of the loss: peak "
                                                                "memory is one chunk's [chunk, vocab]."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute the student's layer activations in the backward pass: much less memory, ~1/3 more "
                "student compute."})
    skip_truncated: bool = field(default=False, metadata={
        "help": "Give responses cut at max_new_tokens no loss (DAPO's overlong filtering). Off in the paper; a "
                "cut response has no end, and its repeated tail, which the teacher can copy from its first copy "
                "of y, otherwise dominates a token-mean loss."})
    skip_first_tokens: int = field(default=0, metadata={
        "help": "Give the first N tokens of every response no loss (TRL SDFT's num_loss_tokens_to_skip). 0 in the "
                "paper. Why one might: the teacher has just read the control phrase there, and on the embedded "
                "default the largest per-token KL sits on the first token of correct and wrong responses alike."})
    teacher: str = field(default="frozen", metadata={"help": "frozen (starting model; paper default), sync (hard "
                                                             "copy every teacher_sync_steps) or ema."})
    teacher_sync_steps: int = field(default=50, metadata={"help": "sync: steps between copies."})
    ema_rate: float = field(default=0.05, metadata={"help": "ema: teacher <- (1 - rate) * teacher + rate * student "
                                                            "after each step. With use_lora the average is taken "
                                                            "of the adapters' A and B matrices separately, which "
                                                            "is not the EMA of the student's weights (B A is not "
                                                            "linear in A and B)."})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "Longest question prompt; longer ones are an "
                                                                   "error (the question is never truncated)."})
    max_teacher_tokens: int = field(default=4096, metadata={
        "help": "Longest teacher sequence chat(x)+y+phrase+y; y is cut (on both sides) to fit."})
    learning_rate: float = field(default=5e-6, metadata={"help": "AdamW peak learning rate (official code: 5e-6)."})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "transformers schedule name."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warmup steps (official code: 20)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (official code: 1.0)."})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 (fp32 weights + bf16 autocast) | fp32."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_target_modules: str = field(default="all-linear", metadata={"help": "Modules given adapters."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every N steps (and at the end)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint in OUTPUT_DIR."})
    report_to: str = field(default="none", metadata={"help": "Trackers: none, or a comma list of tensorboard, "
                                                             "trackio, wandb (when installed)."})
    selfloc_samples: int = field(default=8, metadata={"help": "Responses per heat-map (half correct, half wrong "
                                                              "when there are both); 0 turns heat-maps off."})
    selfloc_steps: int = field(default=0, metadata={"help": "Heat-map every N steps besides the first and the "
                                                            "last (0: only those two)."})
    stop_after_steps: int | None = field(default=None, metadata={
        "help": "Stop (after checkpointing) once this many steps are done, as if killed; for resume tests."})

    def validate(self, num_processes: int = 1) -> None:
        if self.divergence not in DIVERGENCES:
            raise SDZeroError(f"divergence must be one of {sorted(DIVERGENCES)}, not {self.divergence!r}")
        kinds = DIVERGENCES[self.divergence]
        if self.divergence == "sampled":
            self.divergence_kind = "reverse"
        if self.divergence_kind not in kinds:
            raise SDZeroError(f"divergence={self.divergence} takes divergence_kind in {kinds}, "
                              f"not {self.divergence_kind!r}")
        if self.teacher not in ("frozen", "sync", "ema"):
            raise SDZeroError(f"teacher must be frozen, sync or ema, not {self.teacher!r}")
        if self.teacher == "ema" and not 0.0 < self.ema_rate <= 1.0:
            raise SDZeroError(f"ema_rate must be in (0, 1], not {self.ema_rate}")
        if self.teacher == "sync" and self.teacher_sync_steps < 1:
            raise SDZeroError("teacher_sync_steps must be at least 1")
        require_at_least(self, 1, "max_steps", "questions_per_step", "samples_per_question", "micro_batch_size",
                         "topk", "loss_chunk_size", "save_steps", "max_prompt_tokens", "max_teacher_tokens")
        if self.warmup_steps < 0 or not self.max_grad_norm > 0:
            raise SDZeroError(f"warmup_steps must be 0 or more and max_grad_norm above 0, not {self.warmup_steps} "
                              f"and {self.max_grad_norm}")
        if self.skip_first_tokens < 0:
            raise SDZeroError(f"skip_first_tokens must be 0 or more, not {self.skip_first_tokens}")
        if not 0.0 <= self.beta <= 1.0:
            raise SDZeroError(f"beta must be in [0, 1], not {self.beta}")
        if self.questions_per_step % num_processes:
            raise SDZeroError(f"questions_per_step={self.questions_per_step} does not split over {num_processes} "
                              "processes; make it a multiple")


def loss_weights(num_tokens: int, counted: bool, skip_first: int = 0) -> list[float]:
    """Per target token of one response: 1.0 when it is in the loss (its response counts, and the token comes
    after the first `skip_first`), else 0.0. The loss is a mean over the tokens weighted 1."""
    return [float(counted and j >= skip_first) for j in range(num_tokens)]


# --- the module every forward goes through ---------------------------------------------------------------

def _torch():
    import torch

    return torch


class PolicyForward(_torch().nn.Module):
    """A causal LM read at given positions. role="teacher": (hidden [N, H], head [V, H]) without gradient;
    role="student": (per-token divergence [N] against given teacher outputs, the student's log-prob of each
    target without gradient, or None when no targets are given); role="selfloc": per-token full-vocabulary
    reverse KL, no gradient (for the heat-maps)."""

    def __init__(self, lm: Any, clone_head: bool = False):
        super().__init__()
        self.lm = lm
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
                teacher_head=None, targets=None, divergence="topk", kind="mixed", beta=0.5, topk=64,
                chunk_size=1024, sample_temperature=1.0):
        """role="student" returns (per-token divergence [N], log p_student(target) [N] without gradient)."""
        from sdzero import losses

        torch = _torch()
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
                q_lp = None if sample_temperature == 1.0 else losses.token_logprobs_from_hidden(
                    hidden, head, targets, chunk_size, temperature=sample_temperature)
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
    torch = _torch()
    ids = torch.tensor([tokenizer("check", add_special_tokens=False)["input_ids"][:4] or [0]])
    device = next(lm.parameters()).device
    with torch.no_grad():
        logits = lm(input_ids=ids.to(device)).logits[0].float()
        hidden = lm.get_decoder()(input_ids=ids.to(device)).last_hidden_state[0]
        mine = (hidden @ lm.get_output_embeddings().weight.T).float()
    if not torch.allclose(logits, mine, atol=1e-3 * max(1.0, logits.abs().max().item())):
        raise SDZeroError(f"{type(lm).__name__}'s logits are not final hidden state @ LM head (logit soft-capping or "
                          "a head bias?); sdzero distill reads them that way and does not support this model yet")


# --- teachers ----------------------------------------------------------------------------------------------

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
        torch = _torch()
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
        torch = _torch()
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


# --- batches -------------------------------------------------------------------------------------------------

def step_question_indices(num_questions: int, per_step: int, step: int, seed: int) -> list[int]:
    """The global question indices of step `step` (0-based): consecutive slices of one seeded permutation per
    epoch, so the order is a pure function of (seed, step) and a resumed run sees the same questions."""
    out = []
    pos = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(pos, num_questions)
        order = list(range(num_questions))
        random.Random(seed * 7919 + epoch).shuffle(order)
        take = min(per_step - len(out), num_questions - offset)
        out += order[offset : offset + take]
        pos += take
    return out


def pad_batch(seqs: Sequence[list[int]], positions: Sequence[list[int]], pad_id: int):
    """Right-padded ids, attention mask, and the (row, column) index of every aligned position."""
    torch = _torch()
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


# --- the trainer ---------------------------------------------------------------------------------------------

class DistillTrainer:
    def __init__(self, model_name: str, task: Any, questions: Sequence[Any], cfg: DistillConfig, sampling: Any,
                 phrases: Any, system_prompt: str | None = None, generation_backend: str = "hf",
                 generation_batch_size: int = 32, seed: int = 0):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        from sdzero.chat import turn_end_id
        from sdzero.chat import build_prompts
        from sdzero.models import load_tokenizer
        from sdzero.training import apply_lora, disable_dropout, load_model_to_train, trackers, use_bf16

        if not questions:
            raise SDZeroError("Phase 2 has no questions: set --phase2_size")
        # The config says how many responses per question, whatever `sampling.n` the caller passed.
        self.cfg, self.task, self.questions = cfg, task, list(questions)
        self.sampling = replace(sampling, n=cfg.samples_per_question)
        if cfg.divergence == "sampled" and (sampling.temperature <= 0 or sampling.top_p < 1.0):
            raise SDZeroError("divergence=sampled importance-weights rollouts from the student at its sampling "
                              "temperature: it needs temperature > 0 and top_p = 1")
        task.add_control_phrases(phrases)  # a rollout is graded by what follows its last control phrase
        self.phrases, self.model_name = phrases, model_name
        self.system_prompt = system_prompt
        self.generation_backend, self.generation_batch_size = generation_backend, generation_batch_size
        self.seed = seed  # one seed (the generation config's): question order, sampling, adapter initialisation
        tracker_names = trackers(cfg.report_to)
        # accelerate keeps one mixed-precision setting per process; a stage before this one (SRT's Trainer in
        # `sdzero run`) may have set another. Reset it, keeping the processes (PartialState) as they are.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
        # cpu=True without a GPU: several processes launched on a CPU machine then join over gloo.
        self.acc = Accelerator(mixed_precision="bf16" if use_bf16(cfg.precision) else "no",
                               log_with=tracker_names or None, project_dir=cfg.output_dir,
                               cpu=not torch.cuda.is_available())
        cfg.validate(self.acc.num_processes)
        self.main = self.acc.is_main_process
        self.tokenizer = load_tokenizer(model_name)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        if self.pad_id is None:
            raise SDZeroError("the tokenizer has neither a pad nor an end-of-sequence token")
        self.eot = turn_end_id(self.tokenizer)
        self.prompt_ids = build_prompts(self.tokenizer, self.questions, system_prompt, cfg.max_prompt_tokens)
        self.suffix = phrases.suffix_ids(self.tokenizer)

        torch.manual_seed(seed)
        lm = load_model_to_train(model_name)  # fp32 master weights; bf16 only through autocast
        check_head_gives_logits(lm, self.tokenizer)
        if cfg.use_lora:
            lm = apply_lora(lm, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules)
        disable_dropout(lm)
        # The teacher keeps the student's fp32 weights and runs under the same autocast: a bf16 copy would not be
        # the starting model numerically (its residual stream and norms would run in bf16, the student's in fp32).
        self.teacher = Teacher(cfg.teacher, lm, cfg.use_lora, cfg.ema_rate, cfg.teacher_sync_steps)
        sharded = self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if sharded:
            cfg.selfloc_samples = 0  # the heat-map pass runs on the main process alone: not with sharded weights
        if sharded and cfg.teacher != "frozen" and not cfg.use_lora:
            raise SDZeroError("sync/EMA teachers with FSDP or DeepSpeed need use_lora=true for now (the teacher's "
                              "full copy is not sharded the same way as the student)")
        policy = PolicyForward(lm, clone_head=sharded)
        if cfg.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        params = [p for p in policy.parameters() if p.requires_grad]
        try:  # the fused kernel (CPU and GPU, torch >= 2.8) is several times faster than the per-tensor loop
            optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=cfg.max_steps)
        # The scheduler is stepped once per optimizer step by us, not by accelerate (which would step it once
        # per process); it is registered so that save_state/load_state carry it.
        self.policy, self.optimizer = self.acc.prepare(policy, optimizer)
        self.acc.register_for_checkpointing(self.scheduler)
        if self.teacher.module is not None:
            self.teacher.module.to(self.acc.device)
            if sharded:
                self.teacher.module = _prepare_sharded_teacher(self.teacher.module, self.acc)
                self.teacher.module.clone_head = True
        self.out = Path(cfg.output_dir)
        self._vllm: Any = None
        self.history: list[dict[str, Any]] = []
        self.step = 0

    # -- checkpoints --
    def _checkpoints(self) -> list[Path]:
        root = self.out / "checkpoints"
        return sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file()) if root.is_dir() else []

    def save_checkpoint(self) -> None:
        import torch

        target = self.out / "checkpoints" / f"step-{self.step:06d}"
        tmp = target.with_name(target.name + ".tmp")
        if self.main and tmp.exists():
            shutil.rmtree(tmp)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp))
        self.acc.wait_for_everyone()  # every process has written its part (its RNG state) before the rename
        if self.main:
            torch.save(self.teacher.state_dict(), tmp / "teacher.pt")
            atomic_write_json(tmp / "trainer_state.json", {"step": self.step, "history": self.history})
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)  # complete or absent
            for old in self._checkpoints()[: -self.cfg.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def maybe_resume(self) -> None:
        import torch

        found = self._checkpoints() if self.cfg.resume else []
        if not found:
            return
        last = found[-1]
        self.acc.load_state(str(last))
        self.teacher.load_state_dict(torch.load(last / "teacher.pt", weights_only=False))
        state = json.loads((last / "trainer_state.json").read_text())
        self.step, self.history = state["step"], state["history"]
        if self.main:
            print(f"[distill] resumed from {last} (step {self.step})", flush=True)

    # -- one step --
    def rollouts(self, step: int) -> tuple[list[int], list[Any], list[float]]:
        """This process's share of the step: question indices, completions, rewards."""
        from trl.models.utils import unwrap_model_for_generation

        from sdzero.generation import make_generator

        idx = step_question_indices(len(self.questions), self.cfg.questions_per_step, step, self.seed)
        mine = idx[self.acc.process_index :: self.acc.num_processes]
        prompts = [self.prompt_ids[i] for i in mine]
        seed = (self.seed * 100_003 + step) * 1_009 + self.acc.process_index
        if self.generation_backend == "vllm":  # one engine for the run; it pulls the current weights each call
            if self._vllm is None:
                self._vllm = make_generator("vllm", self.acc.unwrap_model(self.policy).lm, self.tokenizer,
                                            accelerator=self.acc)
            completions = self._vllm.generate(prompts, self.sampling, seed=seed)
        else:
            with unwrap_model_for_generation(self.policy, self.acc) as unwrapped, self.acc.autocast():
                generator = make_generator(self.generation_backend, unwrapped.lm, self.tokenizer,
                                           batch_size=self.generation_batch_size, show_progress=False)
                completions = generator.generate(prompts, self.sampling, seed=seed,
                                                 desc=f"step {step + 1} rollouts")
        flat_idx = [i for i, cs in zip(mine, completions) for _ in cs]
        flat = [c for cs in completions for c in cs]
        rewards = self.task.rewards([(self.questions[i], c.text) for i, c in zip(flat_idx, flat)])
        return flat_idx, flat, rewards

    def make_pair(self, i: int, completion: Any, reward: float) -> Any:
        """Student and teacher sequences for question i's response: here, the reviser's context (SD-Zero)."""
        from sdzero.alignment import build_aligned_pair

        return build_aligned_pair(self.prompt_ids[i], completion.ids, self.suffix[1.0 if reward >= 1.0 else 0.0],
                                  self.cfg.max_teacher_tokens, end_ids=self._end_ids(completion))

    def _end_ids(self, completion: Any) -> list[int]:
        # The end-of-turn token the student sampled is a prediction too; a response cut at the cap has none.
        return [completion.stop_id if completion.stop_id is not None else self.eot] \
            if completion.finish_reason == "stop" else []

    def answer_positions(self, i: int, pair: Any) -> list[int]:
        """Which of the response's tokens carry its final answer (as the task grades it), for the answer log."""
        from sdzero.selfloc import answer_token_positions

        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731  (end token: "")
        answer = self.task.answer_text(self.questions[i], self.task.final_attempt(decode(pair.target_ids)))
        return answer_token_positions(decode, pair.target_ids, answer)

    def divergence(self, chunk: Sequence[Any]) -> tuple[Any, Any, Any, Any, Any]:
        """The teacher pass (no gradient) and the student pass over a micro-batch of aligned pairs, both under
        the same autocast: (per-token divergence with gradient, student and teacher log-probs of the targets
        without, and the teacher's hidden states and head for the heat-map)."""
        import torch

        from sdzero.losses import token_logprobs_from_hidden

        cfg, device = self.cfg, self.acc.device
        t_batch = [t.to(device) for t in pad_batch([p.teacher_ids for p in chunk], [p.teacher_positions for p in chunk],
                                                   self.pad_id)]
        s_batch = [t.to(device) for t in pad_batch([p.student_ids for p in chunk], [p.student_positions for p in chunk],
                                                   self.pad_id)]
        targets = torch.tensor([t for p in chunk for t in p.target_ids], device=device)
        unwrapped = self.acc.unwrap_model(self.policy)
        with torch.no_grad(), self.teacher.weights(self.policy, unwrapped) as teacher, self.acc.autocast():
            t_hidden, t_head = teacher(*t_batch, role="teacher")
            t_lp = token_logprobs_from_hidden(t_hidden, t_head, targets, cfg.loss_chunk_size)
        with self.acc.autocast():
            per_token, s_lp = self.policy(*s_batch, role="student", teacher_hidden=t_hidden, teacher_head=t_head,
                                          targets=targets, divergence=cfg.divergence, kind=cfg.divergence_kind,
                                          beta=cfg.beta, topk=cfg.topk, chunk_size=cfg.loss_chunk_size,
                                          sample_temperature=self.sampling.temperature)
        return per_token, s_lp, t_hidden, t_head, t_lp

    def train_step(self, step: int) -> dict[str, Any]:
        import torch

        from sdzero.selfloc import answer_probe_metrics, answer_probe_row

        cfg = self.cfg
        t0 = time.perf_counter()
        idx, completions, rewards = self.rollouts(step)
        t_gen = time.perf_counter() - t0
        pairs = [self.make_pair(i, c, r) for i, c, r in zip(idx, completions, rewards)]
        answers = [self.answer_positions(i, p) for i, p in zip(idx, pairs)]
        device = self.acc.device
        counted = [not (cfg.skip_truncated and c.finish_reason == "length") for c in completions]
        weights = [loss_weights(p.num_tokens, k, cfg.skip_first_tokens) for p, k in zip(pairs, counted)]
        local_tokens = torch.tensor(float(sum(map(sum, weights))), device=device)
        global_tokens = self.acc.reduce(local_tokens.clone(), "sum").item()
        # The DDP gradient is the mean over processes: scale so the sum over all tokens / global count comes out.
        scale = self.acc.num_processes / max(global_tokens, 1.0)
        sums = torch.zeros(4, device=device, dtype=torch.float64)  # KL and tokens on right, then on wrong responses
        probe = [0.0] * len(answer_probe_row(True, [], [], [], []))  # the answer-token log, summed over responses
        selfloc = self._selfloc_wanted(step)
        selfloc_rows = _pick_selfloc(rewards, cfg.selfloc_samples) if selfloc and self.main else []
        records = []
        self.policy.train()
        batches = list(range(0, len(pairs), cfg.micro_batch_size))
        for b, lo in enumerate(batches):
            chunk = pairs[lo : lo + cfg.micro_batch_size]
            weight = torch.tensor([w for ws in weights[lo : lo + len(chunk)] for w in ws], device=device)
            lengths = torch.tensor([p.num_tokens for p in chunk], device=device)
            right = torch.tensor([r >= 1.0 for r in rewards[lo : lo + len(chunk)]], dtype=torch.float32,
                                 device=device).repeat_interleave(lengths)
            with nullcontext() if b == len(batches) - 1 else self.acc.no_sync(self.policy):
                per_token, s_lp, t_hidden, t_head, t_lp = self.divergence(chunk)
                loss = (per_token.float() * weight).sum() * scale
            if not torch.isfinite(loss):
                raise SDZeroError(f"the distillation loss became {loss.item()} at step {step + 1}; lower the "
                                  "learning rate or use precision=fp32 (the last checkpoint is kept)")
            self.acc.backward(loss)
            w, rt = weight.double(), right.double()
            v = per_token.detach().double() * w
            sums += torch.stack([(v * rt).sum(), (w * rt).sum(), (v * (1 - rt)).sum(), (w * (1 - rt)).sum()])
            kl, s_lp, t_lp = per_token.detach().float().tolist(), s_lp.tolist(), t_lp.tolist()
            start = 0
            for j, p in enumerate(chunk):
                span = slice(start, start + p.num_tokens)
                row = answer_probe_row(rewards[lo + j] >= 1.0, answers[lo + j], t_lp[span], s_lp[span], kl[span])
                probe = [a + x for a, x in zip(probe, row)]
                if lo + j in selfloc_rows:  # the teacher rows of the heat-map's responses
                    records.append((lo + j, p, t_hidden[span]))
                start += p.num_tokens
        if records:
            self._write_selfloc(step, records, t_head, idx, rewards)
        grad_norm = None
        if global_tokens > 0:  # every response cut and skipped: no update (Adam would still move on momentum)
            grad_norm = self.acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.teacher.update(self.acc.unwrap_model(self.policy).lm, step + 1)
        wall = time.perf_counter() - t0
        stats = torch.tensor([len(completions), sum(rewards), sum(c.num_tokens for c in completions),
                              sum(c.finish_reason == "length" for c in completions)], device=device,
                             dtype=torch.float64)
        sums = self.acc.reduce(sums, "sum")
        stats = self.acc.reduce(stats, "sum")
        probe = self.acc.reduce(torch.tensor(probe, device=device, dtype=torch.float64), "sum").tolist()
        n = stats[0].item()
        return {
            "step": step + 1,
            "loss": (sums[0] + sums[2]).item() / global_tokens if global_tokens else None,
            "reward": stats[1].item() / n,
            "response_length": stats[2].item() / n,
            "clipped_share": stats[3].item() / n,
            "responses": int(n),  # sampled this step, all processes: the generation budget's unit
            "sampled_tokens": int(stats[2].item()),
            "kl_correct": sums[0].item() / sums[1].item() if sums[1].item() else None,
            "kl_wrong": sums[2].item() / sums[3].item() if sums[3].item() else None,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "learning_rate": self.scheduler.get_last_lr()[0],
            "tokens": int(global_tokens),
            "tokens_per_s": global_tokens / max(wall - t_gen, 1e-9),
            "tokens_per_s_with_generation": global_tokens / max(wall, 1e-9),
            "generation_s": round(t_gen, 2),
            "step_s": round(wall, 2),
            **answer_probe_metrics(probe),
        }

    # -- self-localization --
    def _selfloc_wanted(self, step: int) -> bool:
        c = self.cfg
        if c.selfloc_samples < 1:
            return False
        s = step + 1
        return s == 1 or s == c.max_steps or (c.selfloc_steps > 0 and s % c.selfloc_steps == 0)

    def _write_selfloc(self, step, records, teacher_head, idx, rewards) -> None:
        import torch

        from sdzero.selfloc import render_html

        device = self.acc.device
        pairs = [pair for _, pair, _ in records]
        ids, mask, r, c = (t.to(device) for t in pad_batch([p.student_ids for p in pairs],
                                                            [p.student_positions for p in pairs], self.pad_id))
        with torch.no_grad(), self.acc.autocast():  # one pass for all of the page's responses
            kl = self.acc.unwrap_model(self.policy)(
                ids, mask, r, c, role="selfloc", teacher_hidden=torch.cat([t for _, _, t in records]),
                teacher_head=teacher_head, chunk_size=self.cfg.loss_chunk_size).float().tolist()
        rows, start = [], 0
        for row, pair, _ in records:
            q = self.questions[idx[row]]
            rows.append({"question_id": q.id, "question": q.prompt, "reward": rewards[row],
                         "tokens": [self.tokenizer.decode([t]) for t in pair.target_ids],
                         "kl": [round(x, 5) for x in kl[start : start + pair.num_tokens]]})
            start += pair.num_tokens
        folder = self.out / "selfloc"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"step-{step + 1:06d}"
        atomic_write_text(folder / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_text(folder / f"{name}.html", render_html(rows, f"Self-localization at step {step + 1}: "
                                                                     "per-token KL(student || teacher)"))

    # -- the loop --
    def train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.maybe_resume()
        if self.main:
            self.acc.init_trackers("sdzero-distill", config={k: v for k, v in asdict(cfg).items()
                                                             if isinstance(v, (int, float, str, bool))})
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="distill", unit="step", disable=not self.main)
        stop_at = cfg.max_steps if cfg.stop_after_steps is None else min(cfg.max_steps, cfg.stop_after_steps)
        while self.step < stop_at:
            metrics = self.train_step(self.step)
            self.step += 1
            self.history.append(metrics)
            self.acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self.step)
            if self.main:
                write_history(self.out, self.history)
                bar.set_postfix(loss=f"{metrics['loss'] if metrics['loss'] is not None else math.nan:.4f}",
                                reward=f"{metrics['reward']:.2f}",
                                len=f"{metrics['response_length']:.0f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
                bar.update(1)
            if self.step % cfg.save_steps == 0 or self.step == stop_at:
                self.save_checkpoint()
        bar.close()
        return {"steps_done": self.step, "finished": self.step >= cfg.max_steps, "history": self.history}

    def save_model(self) -> dict[str, Any]:
        from sdzero.training import save_model

        cfg = self.cfg
        summary = {
            "control_phrases": self.phrases.to_dict(),
            "base_model": self.model_name,
            "distill": asdict(cfg),
            "steps": self.step,
            "processes": self.acc.num_processes,
            "first_step": self.history[0] if self.history else None,
            "last_step": self.history[-1] if self.history else None,
        }
        self.acc.wait_for_everyone()
        if self.main:
            lm = self.acc.unwrap_model(self.policy).lm
            if cfg.use_lora:
                lm = copy.deepcopy(lm).merge_and_unload()
            lm.config.use_cache = True
            save_model(lm, self.tokenizer, self.out / "model", summary)
            lm.config.use_cache = False
        self.acc.wait_for_everyone()
        return summary


def _prepare_sharded_teacher(module: Any, acc: Any) -> Any:
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(module, acc)
    from trl.models.utils import prepare_fsdp

    return prepare_fsdp(module, acc)


def _pick_selfloc(rewards: Sequence[float], n: int) -> set[int]:
    """Up to n rows: half correct, half wrong when both exist, the rest from whichever has more."""
    right = [i for i, r in enumerate(rewards) if r >= 1.0]
    wrong = [i for i, r in enumerate(rewards) if r < 1.0]
    take_w = min(len(wrong), max(n // 2, n - len(right)))
    take_r = min(len(right), n - take_w)
    return set(right[:take_r] + wrong[:take_w])


def run_distill(model_name: str, task: Any, questions: Sequence[Any], cfg: DistillConfig, sampling: Any,
                phrases: Any, system_prompt: str | None = None, generation_backend: str = "hf",
                generation_batch_size: int = 32, seed: int = 0, trainer_class: type | None = None) -> dict[str, Any]:
    """Train (resuming when a checkpoint exists) and save OUTPUT_DIR/model; returns a summary."""
    from sdzero.config import read_meta

    done = read_meta(Path(cfg.output_dir) / "model")
    if cfg.resume and done and done.get("distill", {}).get("max_steps") == cfg.max_steps \
            and done.get("steps") == cfg.max_steps:
        print(f"[distill] {cfg.output_dir}/model is already trained; nothing to do (--resume false retrains)",
              flush=True)
        return done
    trainer = (trainer_class or DistillTrainer)(model_name, task, questions, cfg, sampling, phrases, system_prompt,
                                                generation_backend, generation_batch_size, seed)
    try:
        result = trainer.train()
        if not result["finished"]:
            return {"steps": result["steps_done"], "stopped_early": True, "history": result["history"]}
        summary = trainer.save_model()
    finally:
        for tracker in trainer.acc.trackers:  # not acc.end_training(): it also ends the process group, which a
            tracker.finish()                  # pipeline still needs; `sdzero` ends it on exit
    summary["history"] = result["history"]
    return summary
