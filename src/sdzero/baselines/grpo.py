"""GRPO baseline: TRL's GRPOTrainer with the DAPO-style settings the paper used (../shared/SDZERO.md).

What is TRL's and what is ours:
- TRL: the trainer, the group-relative advantages, the clipped token-level objective (`loss_type="dapo"`),
  clip-higher (`epsilon_high`), overlong filtering (`mask_truncated_completions`), checkpoints, accelerate.
- Ours (`SDZeroGRPOTrainer`, two overrides):
  1. rollouts are sampled with sdzero's compact decoder (`sdzero.generation.HFGenerator`) instead of
     `model.generate`: the same distribution, about 3x faster on CPU. vLLM stays TRL's own path.
  2. dropping zero-variance groups: a group whose responses all got the same reward has advantage 0 on
     every row; its rows are taken out of the loss mask and of the token count the DAPO loss divides by,
     so they do not dilute the groups that carry signal. DAPO also oversamples to refill the batch; we do
     not (it would spend generations outside the budget).
- The task's verifier is the reward function; every rollout is charged to the generation budget, and the
  number of steps is the budget divided by the generations per step (`questions_per_step x group size`).
  Under several processes each process charges its own rollouts (`sdzero compare` runs one process).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sdzero.errors import SDZeroError
from sdzero.generation import DEFAULT_BATCH_SIZE
from sdzero.logs import info, interactive


@dataclass
class GRPOBaselineConfig:
    output_dir: str = field(default="outputs/grpo", metadata={"help": "Checkpoints and the trained model "
                                                                       "(OUTPUT_DIR/model)."})
    num_generations: int = field(default=4, metadata={"help": "Group size: responses per question (paper's "
                                                                "budget: 4 per question)."})
    questions_per_step: int = field(default=16, metadata={"help": "Questions per optimizer step (all processes)."})
    max_steps: int = field(default=20, metadata={"help": "Optimizer steps when the generation budget is unlimited; "
                                                       "else budget // (questions_per_step x num_generations)."})
    micro_batch_size: int = field(default=16, metadata={"help": "Responses per forward/backward pass."})
    learning_rate: float = field(default=5e-6, metadata={"help": "AdamW learning rate (the paper's 5e-6 for "
                                                                 "every method)."})
    warmup_steps: int = field(default=3, metadata={"help": "Linear warmup steps."})
    loss_type: str = field(default="dapo", metadata={"help": "TRL loss_type; dapo = token-level mean over the "
                                                             "batch."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range."})
    epsilon_high: float = field(default=0.28, metadata={"help": "Upper clip range (DAPO clip-higher)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient to a reference model (DAPO: 0)."})
    drop_zero_variance_groups: bool = field(default=True, metadata={
        "help": "Take groups whose rewards are all equal out of the loss and its token count."})
    mask_truncated_completions: bool = field(default=True, metadata={
        "help": "No loss on responses cut at the token cap (DAPO overlong filtering)."})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 (autocast) | fp32."})
    save_steps: int = field(default=5, metadata={"help": "Checkpoint every N steps (a CPU step takes minutes)."})
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint in OUTPUT_DIR."})
    stop_after_steps: int | None = field(default=None, metadata={
        "help": "Stop (after checkpointing) once this many steps are done, as if killed; for resume tests."})

    def validate(self) -> None:
        for name in ("num_generations", "questions_per_step", "max_steps", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise SDZeroError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.num_generations < 2:
            raise SDZeroError("GRPO needs num_generations >= 2: an advantage is relative to the group")
        if (self.questions_per_step * self.num_generations) % self.micro_batch_size:
            raise SDZeroError(f"questions_per_step x num_generations = {self.questions_per_step * self.num_generations}"
                              f" must be a multiple of micro_batch_size={self.micro_batch_size}")

    @property
    def generations_per_step(self) -> int:
        return self.questions_per_step * self.num_generations

    def steps_for(self, budget_generations: int | None) -> int:
        if budget_generations is None:
            return self.max_steps
        steps = budget_generations // self.generations_per_step
        if steps < 1:
            raise SDZeroError(f"a budget of {budget_generations} generations is less than one GRPO step "
                              f"({self.generations_per_step})")
        return steps


def drop_zero_variance_rows(advantages: Any, completion_mask: Any) -> Any:
    """The completion mask with every row of a zero-variance group zeroed. With binary rewards a row's
    group-relative advantage is exactly 0 only when all rewards of its group are equal."""
    return completion_mask * (advantages != 0).unsqueeze(1).to(completion_mask.dtype)


def _trainer_class() -> type:
    import torch
    from trl import GRPOTrainer

    class SDZeroGRPOTrainer(GRPOTrainer):
        """GRPOTrainer + sdzero's decoder for rollouts + zero-variance groups out of the loss."""

        sdzero_generation_batch_size = DEFAULT_BATCH_SIZE
        sdzero_seed = 0
        sdzero_drop_zero_variance = True
        sdzero_trace: list | None = None  # a list: each training batch's advantages and loss mask go in (tests)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                                  has_tool_images=False):
            if self.use_vllm or images or getattr(self, "use_transformers_continuous_batching", False):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                     has_tool_images)
            from trl.models.utils import unwrap_model_for_generation

            from sdzero.generation import HFGenerator, SamplingParams

            if self.top_k not in (None, 0):
                raise SDZeroError("sdzero's decoder samples without top-k; set top_k=0")
            params = SamplingParams(self.max_completion_length, self.temperature, self.top_p or 1.0)
            seed = (self.sdzero_seed * 100_003 + self.state.global_step) * 1_009 + self.accelerator.process_index
            with unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                             gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                             gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
                                             ) as unwrapped, torch.no_grad(), self.accelerator.autocast():
                gen = HFGenerator(unwrapped, self._tokenizer, batch_size=self.sdzero_generation_batch_size,
                                  show_progress=False)
                outs = gen.generate(prompt_ids, params, seed=seed)
            # TRL's completions end with the stop token the model sampled (it is trained on too).
            return [c.ids + ([c.stop_id] if c.stop_id is not None else []) for [c] in outs], None

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if self.sdzero_drop_zero_variance and self.model.training:
                out["completion_mask"] = drop_zero_variance_rows(out["advantages"], out["completion_mask"])
                out["num_items_in_batch"] = self.accelerator.gather(out["completion_mask"].sum()).sum()
                self._metrics["train"]["rows_in_loss"].append(
                    self.accelerator.gather((out["completion_mask"].sum(1) > 0).float()).mean().item())
            if self.sdzero_trace is not None and self.model.training:
                self.sdzero_trace.append({"advantages": out["advantages"].tolist(),
                                          "rows_in_loss": (out["completion_mask"].sum(1) > 0).tolist()})
            return out

    return SDZeroGRPOTrainer


def _budget_file(checkpoint: Path, process_index: int) -> Path:
    return checkpoint / f"sdzero_budget.{process_index}.json"


def _checkpoint_callback(budget: Any, start: tuple[int, int], stop_after_steps: int | None) -> Any:
    """A TrainerCallback that writes the generations and tokens this process has sampled in this GRPO run
    (the budget's counts less `start`) into every checkpoint, so that a resumed run charges them again, and
    stops after `stop_after_steps`."""
    from transformers import TrainerCallback

    from sdzero.files import atomic_write_json

    class BudgetCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if stop_after_steps is not None and state.global_step >= stop_after_steps:
                control.should_save = control.should_training_stop = True

        def on_save(self, args, state, control, **kw):
            from accelerate import PartialState

            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            atomic_write_json(_budget_file(ckpt, PartialState().process_index),
                              {"generations": budget.generations - start[0],
                               "sampled_tokens": budget.sampled_tokens - start[1]})

    return BudgetCheckpoint()


def grpo_dataset(questions: Sequence[Any], system_prompt: str | None = None) -> Any:
    """TRL's conversational prompt column plus the question's index, which the reward function reads."""
    from datasets import Dataset

    def messages(q):
        return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
            [{"role": "user", "content": q.prompt}]

    return Dataset.from_list([{"prompt": messages(q), "question_index": i} for i, q in enumerate(questions)])


def make_reward_function(task: Any, questions: Sequence[Any], budget: Any) -> Any:
    """The task's verifier as a TRL reward function; every scored rollout is charged to the budget."""

    def verifier_reward(prompts, completions, completion_ids, question_index, **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        budget.charge(len(completion_ids), sum(len(ids) for ids in completion_ids), "grpo rollouts")
        return task.rewards([(questions[i], t) for i, t in zip(question_index, texts)])

    return verifier_reward


def _last_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint-N folder that has its budget record (a checkpoint cut short by a kill has none)."""
    found = sorted((p for p in folder.glob("checkpoint-*") if _budget_file(p, 0).is_file()),
                   key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []
    return found[-1] if found else None


def run_grpo(model_name: str, task: Any, questions: Sequence[Any], cfg: GRPOBaselineConfig, sampling: Any,
             budget: Any, system_prompt: str | None = None, generation_batch_size: int = DEFAULT_BATCH_SIZE,
             seed: int = 0) -> dict[str, Any]:
    """Train within `budget` and save OUTPUT_DIR/model; returns a summary with the per-step log."""
    import torch
    from trl import GRPOConfig

    from sdzero.config import read_meta
    from sdzero.models import load_tokenizer
    from sdzero.training import load_model_to_train, save_on_main_process, use_bf16

    cfg.validate()
    out = Path(cfg.output_dir)
    done = read_meta(out / "model")
    if done and "grpo" in done:
        budget.charge(done["generations"], done["sampled_tokens"], "grpo (done before)")
        return done
    if not questions:
        raise SDZeroError("GRPO has no questions")
    steps = cfg.steps_for(budget.remaining)
    from accelerate import PartialState

    procs = PartialState().num_processes
    per_device = cfg.generations_per_step // procs
    if cfg.generations_per_step % procs or per_device % cfg.micro_batch_size:
        raise SDZeroError(f"{cfg.generations_per_step} responses per step do not split over {procs} processes in "
                          f"micro-batches of {cfg.micro_batch_size}")
    args = GRPOConfig(
        output_dir=str(out / "checkpoints"), max_steps=steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.warmup_steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=per_device // cfg.micro_batch_size,
        num_generations=cfg.num_generations, max_completion_length=sampling.max_new_tokens,
        temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, loss_type=cfg.loss_type,
        epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta,
        mask_truncated_completions=cfg.mask_truncated_completions, bf16=use_bf16(cfg.precision),
        gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(), logging_steps=1,
        save_steps=cfg.save_steps, save_total_limit=2, report_to=[], seed=seed, data_seed=seed,
        disable_tqdm=not interactive(),
    )
    tok = load_tokenizer(model_name)
    model = load_model_to_train(model_name)
    t0, g0, k0 = time.perf_counter(), budget.generations, budget.sampled_tokens
    trainer = _trainer_class()(model=model, reward_funcs=make_reward_function(task, questions, budget), args=args,
                               train_dataset=grpo_dataset(questions, system_prompt), processing_class=tok,
                               callbacks=[_checkpoint_callback(budget, (g0, k0), cfg.stop_after_steps)])
    trainer.sdzero_generation_batch_size = generation_batch_size
    trainer.sdzero_seed = seed
    trainer.sdzero_drop_zero_variance = cfg.drop_zero_variance_groups
    last = _last_checkpoint(out / "checkpoints") if cfg.resume else None
    if last is not None:  # what the steps before the checkpoint sampled counts against the budget too
        spent = json.loads(_budget_file(last, PartialState().process_index).read_text())
        budget.charge(spent["generations"], spent["sampled_tokens"], "grpo (before the checkpoint)")
        if trainer.accelerator.is_main_process:
            info(f"[grpo] resumed from {last}")
    trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
    history = [h for h in trainer.state.log_history if "reward" in h]
    summary = {
        "base_model": model_name, "grpo": asdict(cfg), "steps": steps, "generations": budget.generations - g0,
        "sampled_tokens": budget.sampled_tokens - k0, "seconds": round(time.perf_counter() - t0, 1),
        "history": [{"step": h.get("step"), "reward": h.get("reward"), "loss": h.get("loss"),
                     "completion_length": h.get("completions/mean_length"),
                     "zero_variance_share": h.get("frac_reward_zero_std"),
                     "rows_in_loss": h.get("rows_in_loss")} for h in history],
    }
    if trainer.state.global_step < steps:  # stopped early (stop_after_steps): the checkpoint is the result
        return summary
    save_on_main_process(trainer.accelerator.unwrap_model(trainer.model), tok, out / "model", summary)
    return summary


def train(ctx: Any, questions: Sequence[Any], budget: Any, cfg: GRPOBaselineConfig) -> list[dict[str, Any]]:
    """`sdzero compare`'s entry: GRPO from the context's model within `budget`; its reward-vs-generations curve."""
    summary = run_grpo(ctx.model_config.model, ctx.task, questions, cfg, ctx.sampling(), budget, ctx.system_prompt,
                       ctx.generation.batch_size, ctx.seed)
    return [{"generations": (i + 1) * cfg.generations_per_step, "train_accuracy": h["reward"]}
            for i, h in enumerate(summary["history"])]
