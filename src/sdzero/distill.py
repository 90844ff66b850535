"""`sdzero distill`: Phase 2, on-policy self-distillation (../shared/SDZERO.md).

One loop, one optimizer step per iteration (`DistillTrainer.train_step`):
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
- Both models are read through their final hidden states and the LM head (`sdzero.policy`), never a
  [batch, length, vocab] logits tensor.
- The teacher is the starting model (frozen), or a copy the student's weights are pasted into every N
  steps (sync), or an EMA of the student: after each step teacher <- (1 - ema_rate) * teacher +
  ema_rate * student (ema_rate = how much of the student moves in; 0 would be frozen, 1 a sync every step).
  It keeps fp32 weights and runs under the student's autocast (`sdzero.policy.Teacher`).
- Generation uses the student's current weights through the `Generator` interface (transformers, or vLLM
  when installed and asked for).

Read top-down: the config, the trainer (setup, then the step, then rollouts and pairs, then the loop and
checkpoints). What a step records (KL on right/wrong responses, the answer-token log, heat-maps) lives in
`sdzero.distill_log`; the two models in `sdzero.policy`; precision, LoRA and saving in `sdzero.training`.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from sdzero.distill_log import Heatmaps, StepLog
from sdzero.errors import SDZeroError, require_at_least
from sdzero.files import atomic_write_json
from sdzero.generation import DEFAULT_BATCH_SIZE
from sdzero.policy import (DIVERGENCES, DivergenceSpec, PolicyForward, Teacher, check_head_gives_logits, pad_batch,
                           prepare_sharded_teacher)
from sdzero.logs import info
from sdzero.runfolder import write_history


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
    loss_tokens: str = field(default="all", metadata={
        "help": "all: every response token is in the loss (paper). final_attempt: only the tokens after a "
                "response's last control phrase (the last attempt of a self-revision trace; all of a response "
                "without one), so Phase 2 sharpens the student's own second attempt instead of folding its trace "
                "into one answer. Not in the paper: after pairs SRT most first attempts are traces, and their "
                "accuracy is SRT's (RESULTS.md)."})
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
        if self.loss_tokens not in ("all", "final_attempt"):
            raise SDZeroError(f"loss_tokens must be all or final_attempt, not {self.loss_tokens!r}")
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
        from sdzero.training import trackers

        trackers(self.report_to)  # unknown or not installed: now, not when training starts
        if self.questions_per_step % num_processes:
            raise SDZeroError(f"questions_per_step={self.questions_per_step} does not split over {num_processes} "
                              "processes; make it a multiple")


def loss_weights(num_tokens: int, counted: bool, skip_first: int = 0) -> list[float]:
    """Per target token of one response: 1.0 when it is in the loss (its response counts, and the token comes
    after the first `skip_first`), else 0.0. The loss is a mean over the tokens weighted 1."""
    return [float(counted and j >= skip_first) for j in range(num_tokens)]


def final_attempt_start(decode: Any, ids: Sequence[int], control_phrases: Sequence[str]) -> int:
    """Index of the first token of `ids` whose text reaches past the end of the last control phrase in the
    decoded response (where its final attempt begins, as grading cuts it); 0 when it holds none."""
    from sdzero.selfloc import token_covering
    from sdzero.verifiers.answers import last_control_phrase_end

    cut = last_control_phrase_end(decode(list(ids)), control_phrases)
    return 0 if cut < 0 else token_covering(decode, ids, cut)


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



# --- the trainer ---------------------------------------------------------------------------------------------

class DistillTrainer:
    """Phase 2 from Python or the command line.

        trainer = DistillTrainer(model="out/srt/model", reward_funcs=my_reward, train_dataset=questions,
                                 args=DistillConfig(output_dir="out/distill", max_steps=20))
        trainer.train()          # resumes from OUTPUT_DIR/checkpoints when there are some
        trainer.save_model()     # OUTPUT_DIR/model

    `model`: a hub name, a local path (an SRT model folder: its control phrases are used) or a model object
    (trained in place; pass its tokenizer as `processing_class`). `reward_funcs`: a function (question,
    response) -> float or a `Task`. `train_dataset`: a list or `datasets.Dataset` of strings, dicts or
    Questions (`sdzero.tasks.user`). `sampling` defaults to the commands' (GenerationConfig: T=0.7).
    """

    def __init__(self, model: Any, reward_funcs: Any, train_dataset: Any, args: DistillConfig | None = None,
                 sampling: Any = None, phrases: Any = None, system_prompt: str | None = None,
                 generation_backend: str = "hf", generation_batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
                 processing_class: Any = None):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        from sdzero.chat import ControlPhrases, build_prompts, turn_end_id
        from sdzero.config import read_meta
        from sdzero.context import Context
        from sdzero.models import load_tokenizer
        from sdzero.tasks.user import as_questions, as_task
        from sdzero.training import (apply_lora, check_sharding_applied, disable_dropout, load_model_to_train,
                                     make_adamw, trackers, use_bf16)

        cfg = args if args is not None else DistillConfig()
        by_name = isinstance(model, (str, Path))
        if not by_name and processing_class is None:
            raise SDZeroError("a model object needs its tokenizer: pass processing_class=tokenizer")
        if isinstance(train_dataset, Sequence) and not train_dataset:
            raise SDZeroError("Phase 2 has no questions: set --phase2_size")
        task, questions = as_task(reward_funcs), as_questions(train_dataset)
        sampling = sampling if sampling is not None else Context().sampling()  # the commands' defaults
        if phrases is None:  # an SRT model's own phrases (its sdzero.json), else the paper's
            phrases = ControlPhrases.from_dict((read_meta(str(model)) or {}).get("control_phrases")) if by_name \
                else ControlPhrases()
        model_name = str(model) if by_name else getattr(model.config, "_name_or_path", "") or type(model).__name__
        # The config says how many responses per question, whatever `sampling.n` the caller passed.
        self.cfg, self.task, self.questions = cfg, task, questions
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
        check_sharding_applied(self.acc.distributed_type)
        cfg.validate(self.acc.num_processes)
        self.main = self.acc.is_main_process
        self.tokenizer = processing_class if processing_class is not None else load_tokenizer(model_name)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        if self.pad_id is None:
            raise SDZeroError("the tokenizer has neither a pad nor an end-of-sequence token")
        self.eot = turn_end_id(self.tokenizer)
        self.prompt_ids = build_prompts(self.tokenizer, self.questions, system_prompt, cfg.max_prompt_tokens)
        self.suffix = phrases.suffix_ids(self.tokenizer)

        torch.manual_seed(seed)
        lm = load_model_to_train(model)  # by name: fp32 master weights; bf16 only through autocast
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
        spec = DivergenceSpec(cfg.divergence, cfg.divergence_kind, cfg.beta, cfg.topk, cfg.loss_chunk_size,
                              self.sampling.temperature)
        policy = PolicyForward(lm, clone_head=sharded, spec=spec)
        if cfg.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = make_adamw([p for p in policy.parameters() if p.requires_grad], cfg.learning_rate,
                               cfg.weight_decay)
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
                self.teacher.module = prepare_sharded_teacher(self.teacher.module, self.acc)
                self.teacher.module.clone_head = True
        self.out = Path(cfg.output_dir)
        self.heatmaps = Heatmaps(self.out / "selfloc", cfg.selfloc_samples, cfg.selfloc_steps, cfg.max_steps,
                                 lambda t: self.tokenizer.decode([t]), teacher_read=phrases.phrase)
        self._vllm: Any = None
        self.history: list[dict[str, Any]] = []
        self.step = 0

    # -- one step --
    def train_step(self, step: int) -> dict[str, Any]:
        """Rollouts, rewards, pairs, teacher pass, student pass, backward, optimizer step, teacher update."""
        import torch

        cfg, device = self.cfg, self.acc.device
        t0 = time.perf_counter()
        idx, completions, rewards = self.rollouts(step)
        t_gen = time.perf_counter() - t0
        pairs = [self.make_pair(i, c, r) for i, c, r in zip(idx, completions, rewards)]
        counted = [not (cfg.skip_truncated and c.finish_reason == "length") for c in completions]
        skip = [cfg.skip_first_tokens] * len(pairs)
        if cfg.loss_tokens == "final_attempt":
            decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
            skip = [max(n, final_attempt_start(decode, p.target_ids, self.task.control_phrases))
                    for n, p in zip(skip, pairs)]
        weights = [loss_weights(p.num_tokens, k, n) for p, k, n in zip(pairs, counted, skip)]
        global_tokens = self.acc.reduce(torch.tensor(float(sum(map(sum, weights))), device=device), "sum").item()
        # The DDP gradient is the mean over processes: scale so the sum over all tokens / global count comes out.
        scale = self.acc.num_processes / max(global_tokens, 1.0)
        log = StepLog(rewards, [self.answer_positions(i, p) for i, p in zip(idx, pairs)], device,
                      self.heatmaps.rows_for(step, rewards) if self.main else set())
        self.policy.train()
        batches = list(range(0, len(pairs), cfg.micro_batch_size))
        for b, lo in enumerate(batches):
            chunk = pairs[lo : lo + cfg.micro_batch_size]
            weight = torch.tensor([w for ws in weights[lo : lo + len(chunk)] for w in ws], device=device)
            with nullcontext() if b == len(batches) - 1 else self.acc.no_sync(self.policy):
                per_token, s_lp, t_hidden, t_head, t_lp = self.divergence(chunk)
                loss = (per_token.float() * weight).sum() * scale
            if not torch.isfinite(loss):
                raise SDZeroError(f"the distillation loss became {loss.item()} at step {step + 1}; lower the "
                                  "learning rate or use precision=fp32 (the last checkpoint is kept)")
            self.acc.backward(loss)
            log.add(lo, chunk, weight, per_token, s_lp, t_lp, t_hidden, t_head)
        self.heatmaps.write(step, log, self.heatmap_kl, [self.questions[i] for i in idx])
        grad_norm = None
        if global_tokens > 0:  # every response cut and skipped: no update (Adam would still move on momentum)
            grad_norm = self.acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.teacher.update(self.acc.unwrap_model(self.policy).lm, step + 1)
        return log.metrics(self.acc, completions, global_tokens, grad_norm, self.scheduler.get_last_lr()[0], step,
                           wall=time.perf_counter() - t0, t_gen=t_gen)

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
                                          targets=targets)
        return per_token, s_lp, t_hidden, t_head, t_lp

    def heatmap_kl(self, pairs: list[Any], teacher_hidden: Any, teacher_head: Any) -> list[float]:
        """Per-token full-vocabulary KL(student || teacher) of `pairs`, one pass, no gradient (the heat-maps)."""
        import torch

        ids, mask, r, c = (t.to(self.acc.device) for t in pad_batch([p.student_ids for p in pairs],
                                                                     [p.student_positions for p in pairs],
                                                                     self.pad_id))
        with torch.no_grad(), self.acc.autocast():
            return self.acc.unwrap_model(self.policy)(ids, mask, r, c, role="selfloc", teacher_hidden=teacher_hidden,
                                                      teacher_head=teacher_head).float().tolist()

    # -- the loop --
    def train(self) -> dict[str, Any]:
        from sdzero.logs import progress

        cfg = self.cfg
        self.maybe_resume()
        if self.main:
            self.acc.init_trackers("sdzero-distill", config={k: v for k, v in asdict(cfg).items()
                                                             if isinstance(v, (int, float, str, bool))})
        bar = progress(cfg.max_steps, "distill", unit="step", disable=not self.main, initial=self.step)
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
        self.heatmaps.resume()
        if self.main:
            info(f"[distill] resumed from {last} (step {self.step})")

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


def run_distill(model_name: str, task: Any, questions: Sequence[Any], cfg: DistillConfig, sampling: Any,
                phrases: Any, system_prompt: str | None = None, generation_backend: str = "hf",
                generation_batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
                trainer_class: type | None = None) -> dict[str, Any]:
    """Train (resuming when a checkpoint exists) and save OUTPUT_DIR/model; returns a summary."""
    from sdzero.config import read_meta

    done = read_meta(Path(cfg.output_dir) / "model")
    if cfg.resume and done and done.get("distill", {}).get("max_steps") == cfg.max_steps \
            and done.get("steps") == cfg.max_steps:
        info(f"[distill] {cfg.output_dir}/model is already trained; nothing to do (--resume false retrains)")
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
