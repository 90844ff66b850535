"""SDFT: on-policy self-distillation where the teacher's context holds a demonstration instead of the
model's own draft and reward (../shared/SDZERO.md, "Baselines").

Student: chat(x) + y. Teacher: chat(x + demonstration) + y, the same weights (frozen, synced or EMA, as in
Phase 2) with a demonstration of a correct answer in the user turn. Everything else (rollouts, the
token-level divergence, checkpoints, `accelerate launch`) is the Phase-2 trainer's (`sdzero.distill`).

The demonstration is the task's gold solution when it has one (`Question.solution`: a dataset's worked
solution such as GSM8K's, the expression and its value for reasoning-gym arithmetic), else a sentence
giving the final answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from sdzero.distill import DistillConfig, DistillTrainer
from sdzero.errors import SDZeroError
from sdzero.generation import DEFAULT_BATCH_SIZE

DEMONSTRATION_TEMPLATE = ("{question}\n\nHere is a correct response to this question, as an example:\n"
                          "{demonstration}\n\nNow write a response of your own.")
ANSWER_DEMONSTRATION = "The final answer is {answer}."


@dataclass
class SDFTConfig(DistillConfig):
    output_dir: str = field(default="outputs/sdft", metadata={"help": "As for `sdzero distill`."})
    demonstration_template: str = field(default=DEMONSTRATION_TEMPLATE, metadata={
        "help": "The teacher's user message; {question} is the question's prompt, {demonstration} the "
                "demonstration."})
    answer_demonstration: str = field(default=ANSWER_DEMONSTRATION, metadata={
        "help": "The demonstration when the task has no gold solution; {answer} is the gold final answer."})

    def validate(self, num_processes: int = 1) -> None:
        super().validate(num_processes)
        for key in ("{question}", "{demonstration}"):
            if key not in self.demonstration_template:
                raise SDZeroError(f"demonstration_template must contain {key}: {self.demonstration_template!r}")
        if "{answer}" not in self.answer_demonstration:
            raise SDZeroError(f"answer_demonstration must contain {{answer}}: {self.answer_demonstration!r}")


def teacher_message(question: Any, cfg: SDFTConfig) -> str:
    demo = question.solution or cfg.answer_demonstration.replace("{answer}", str(question.answer))
    return cfg.demonstration_template.replace("{question}", question.prompt).replace("{demonstration}", demo)


class SDFTTrainer(DistillTrainer):
    """The Phase-2 trainer with the demonstration teacher's context (same constructor)."""

    def __init__(self, *args: Any, **kw: Any):
        from sdzero.chat import chat_prompt_ids

        super().__init__(*args, **kw)
        if not isinstance(self.cfg, SDFTConfig):
            raise SDZeroError("SDFTTrainer needs an SDFTConfig")
        self.teacher_prompt_ids = [chat_prompt_ids(self.tokenizer, teacher_message(q, self.cfg), self.system_prompt)
                                   for q in self.questions]
        self.heatmaps.teacher_read = lambda reward: "the question with a demonstration, before the response"

    def make_pair(self, i: int, completion: Any, reward: float) -> Any:
        from sdzero.alignment import build_context_pair

        return build_context_pair(self.prompt_ids[i], self.teacher_prompt_ids[i], completion.ids,
                                  self.cfg.max_teacher_tokens, end_ids=self._end_ids(completion))


def run_sdft(model_name: str, task: Any, questions: Sequence[Any], cfg: SDFTConfig, sampling: Any,
             system_prompt: str | None = None, generation_backend: str = "hf",
             generation_batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0) -> dict[str, Any]:
    """Train (resuming when a checkpoint exists) and save OUTPUT_DIR/model, as `run_distill` does."""
    from sdzero.chat import ControlPhrases
    from sdzero.distill import run_distill

    return run_distill(model_name, task, questions, cfg, sampling, ControlPhrases(), system_prompt,
                       generation_backend, generation_batch_size, seed, trainer_class=SDFTTrainer)


def train(ctx: Any, questions: Sequence[Any], budget: Any, cfg: SDFTConfig) -> list[dict[str, Any]]:
    """`sdzero compare`'s entry: SDFT from the context's model, as many steps as `budget` pays for (one
    response per question per step); its reward-vs-generations curve."""
    from dataclasses import replace

    from sdzero.runfolder import history_totals, read_history, reward_curve

    steps = budget.remaining // cfg.questions_per_step if budget.remaining is not None else cfg.max_steps
    if steps < 1:
        raise SDZeroError(f"a budget of {budget.remaining} generations is less than one SDFT step")
    cfg = replace(cfg, max_steps=steps)
    run_sdft(ctx.model_config.model, ctx.task, questions, cfg, ctx.sampling(), ctx.system_prompt,
             ctx.generation.backend, ctx.generation.batch_size, ctx.seed)
    history = read_history(cfg.output_dir)
    totals = history_totals(history)
    budget.charge(totals["responses"], totals["sampled_tokens"], "sdft rollouts")
    return reward_curve(history)
