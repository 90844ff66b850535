"""`sdzero eval`: avg@k, unbiased pass@k, greedy accuracy, response length, generate-then-revise.

Three generation passes over the held-out questions:
1. k sampled drafts per question at the eval temperature -> avg@k, pass@k, response length;
2. one greedy draft per question -> greedy accuracy;
3. each sampled draft continued by the reviser: draft + sep + P_r + sep, P_r chosen by the draft's reward
   -> wrong->right (correction rate) and right->right.
The "fresh resample" reference for the correction rate reuses pass 1 (for a wrong draft, the accuracy of
the other k-1 samples of the same question), so it costs no generation.
A revision is scored on its own text (what follows the control phrase), never on the draft, and every
response by its final attempt (`Task.final_attempt`: a self-revision trace is graded by its last answer).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sdzero.chat import ControlPhrases, build_prompts, reviser_context_ids
from sdzero.errors import SDZeroError, require_at_least
from sdzero.files import atomic_write_json
from sdzero.generation import Generator, SamplingParams
from sdzero.metrics import mean_pass_at_k, report_ks
from sdzero.tasks.base import Question, Task
from sdzero.verifiers.answers import last_control_phrase_end


EVAL_SPLITS = ("eval", "validation")


@dataclass
class EvalConfig:
    split: str = field(default="eval", metadata={"help": "Which questions: eval (the held-out set) or validation "
                                                         "(--validation_size questions, for tuning)."})
    num_samples: int = field(default=4, metadata={"help": "k: sampled responses per question (avg@k, pass@1..k)."})
    greedy: bool = field(default=True, metadata={"help": "Also score one greedy response per question."})
    revise: bool = field(default=True, metadata={"help": "Generate-then-revise: continue every sampled draft "
                                                           "with the control phrase chosen by its reward."})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "Longest allowed question prompt (tokens); "
                                                                    "longer prompts are an error, never cut."})
    max_reviser_tokens: int = field(default=2048, metadata={"help": "Longest reviser context; the draft is "
                                                                     "truncated to fit, never the question."})
    output: str | None = field(default=None, metadata={"help": "Where to write the JSON report "
                                                               "(default: outputs/eval-<task>-<time>.json)."})
    save_samples: bool = field(default=True, metadata={"help": "Keep every response in the JSON report."})
    suite: str | None = field(default=None, metadata={
        "help": "Evaluate on every benchmark of a suite instead of --task: paper-math (AIME24, AIME25, HMMT25, "
                "AMO-Bench, OpenR1 held-out, MATH), paper-code (Codeforces held-out, LiveCodeBench), offline (GSM8K "
                "from ../shared/data, HumanEval); one table with the average. --output is then a folder."})
    benchmark_paths: str | None = field(default=None, metadata={
        "help": "With --suite: NAME=PATH,... local files for benchmarks (machines without the hub)."})
    suite_size: int | None = field(default=None, metadata={
        "help": "With --suite: at most N questions per benchmark (default: each benchmark whole)."})

    def validate(self) -> None:
        require_at_least(self, 1, "num_samples", "max_prompt_tokens", "max_reviser_tokens")
        if self.suite_size is not None and self.suite_size < 1:
            raise SDZeroError(f"suite_size must be at least 1, not {self.suite_size}")
        if self.benchmark_paths and not self.suite:
            raise SDZeroError("benchmark_paths goes with --suite")


def check_eval_split(split: str, tc: Any) -> None:
    if split not in EVAL_SPLITS:
        raise SDZeroError(f"the evaluation split must be eval (held-out) or validation, not {split!r}")
    if split == "validation" and tc.validation_size < 1:
        raise SDZeroError("evaluating on the validation split needs --validation_size N (N >= 1)")


def evaluate(
    generator: Generator,
    task: Task,
    questions: Sequence[Question],
    sampling: SamplingParams,
    cfg: EvalConfig,
    phrases: ControlPhrases = ControlPhrases(),
    system_prompt: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate and return {'metrics': {...}, 'questions': [...]}; nothing is written here."""
    if not questions:
        raise SDZeroError("no questions to evaluate")
    if cfg.num_samples < 1:
        raise SDZeroError("num_samples must be >= 1")
    tok = generator.tokenizer
    task.add_control_phrases(phrases)  # a response is graded by what follows its last control phrase
    prompts = build_prompts(tok, questions, system_prompt, cfg.max_prompt_tokens)
    k = cfg.num_samples
    timings: dict[str, float] = {}
    spent = {"generations": 0, "sampled_tokens": 0}

    def run(prompt_ids, params, s, desc):
        t0 = time.perf_counter()
        outs = generator.generate(prompt_ids, params, seed=s, desc=desc)
        timings[desc] = timings.get(desc, 0.0) + time.perf_counter() - t0
        for per_prompt in outs:
            spent["generations"] += len(per_prompt)
            spent["sampled_tokens"] += sum(c.num_tokens for c in per_prompt)
        return outs

    drafts = run(prompts, SamplingParams(sampling.max_new_tokens, sampling.temperature, sampling.top_p, n=k),
                 seed, "sampled drafts")
    flat_verdicts = task.verdicts([(q, c.text) for q, cs in zip(questions, drafts) for c in cs])
    rewards = [[v["reward"] for v in flat_verdicts[i * k : (i + 1) * k]] for i in range(len(questions))]
    detailed = len(flat_verdicts[0]) > 1  # code tasks: keep pass/fail/timeout/error and the stderr tail
    flat = [r for rs in rewards for r in rs]
    lengths = [c.num_tokens for cs in drafts for c in cs]
    metrics: dict[str, Any] = {
        "questions": len(questions),
        "samples_per_question": k,
        "temperature": sampling.temperature,
        f"avg@{k}": sum(flat) / len(flat),
        "mean_response_tokens": sum(lengths) / len(lengths),
        "truncated_fraction": sum(c.finish_reason == "length" for cs in drafts for c in cs) / len(lengths),
    }
    for kk in report_ks(k):
        metrics[f"pass@{kk}"] = mean_pass_at_k(rewards, kk)
    metrics.update(inline_revision_metrics([c.text for cs in drafts for c in cs], flat, task.control_phrases))

    greedy_rewards = None
    if cfg.greedy:
        greedy = run(prompts, SamplingParams(sampling.max_new_tokens, 0.0, 1.0, n=1), seed, "greedy")
        greedy_rewards = task.rewards([(q, cs[0].text) for q, cs in zip(questions, greedy)])
        metrics["greedy_accuracy"] = sum(greedy_rewards) / len(greedy_rewards)

    revisions = revision_rewards = None
    if cfg.revise:
        suffix = phrases.suffix_ids(tok)
        contexts, owners = [], []
        for qi, (p, cs) in enumerate(zip(prompts, drafts)):
            for si, c in enumerate(cs):
                contexts.append(reviser_context_ids(p, c.ids, suffix[rewards[qi][si]], cfg.max_reviser_tokens))
                owners.append((qi, si))
        outs = run(contexts, SamplingParams(sampling.max_new_tokens, sampling.temperature, sampling.top_p, n=1),
                   seed + 1, "revisions")
        revisions = [[None] * k for _ in questions]
        revision_rewards = [[0.0] * k for _ in questions]
        scored = task.rewards([(questions[qi], cs[0].text) for (qi, _), cs in zip(owners, outs)])
        for (qi, si), cs, r in zip(owners, outs, scored):
            revisions[qi][si] = cs[0]
            revision_rewards[qi][si] = r
        metrics.update(correction_metrics(rewards, revision_rewards))

    if detailed:
        statuses = [v.get("status") for v in flat_verdicts]
        metrics["verdicts"] = {s: statuses.count(s) for s in ("pass", "fail", "timeout", "error")}
    metrics["generations"] = spent["generations"]
    metrics["sampled_tokens"] = spent["sampled_tokens"]
    metrics["seconds"] = {name: round(t, 2) for name, t in timings.items()}

    records = []
    for qi, q in enumerate(questions):
        rec: dict[str, Any] = {**q.to_record(), "rewards": rewards[qi]}
        if cfg.save_samples:
            rec["samples"] = [c.text for c in drafts[qi]]
        if detailed:
            rec["verdicts"] = flat_verdicts[qi * k : (qi + 1) * k]
        if greedy_rewards is not None:
            rec["greedy_reward"] = greedy_rewards[qi]
        if revisions is not None:
            rec["revision_rewards"] = revision_rewards[qi]
            if cfg.save_samples:
                rec["revisions"] = [c.text for c in revisions[qi]]
        records.append(rec)
    return {"metrics": metrics, "questions": records}


def inline_revision_metrics(responses: Sequence[str], rewards: Sequence[float],
                            control_phrases: Sequence[str]) -> dict[str, float]:
    """How often a first attempt is itself a self-revision trace (it holds a control phrase: a draft, the
    phrase, another attempt, as SRT's generation loss teaches), and the accuracy of those responses and of
    the others. Grading already takes a trace's final attempt; this says how much of the accuracy comes
    from revising inline, which Phase 2 is meant to fold into a direct answer."""
    nan = float("nan")
    traced = [last_control_phrase_end(text, control_phrases) >= 0 for text in responses]
    with_trace = [r for r, t in zip(rewards, traced) if t]
    without = [r for r, t in zip(rewards, traced) if not t]
    return {
        "inline_revision_share": len(with_trace) / len(traced) if traced else nan,
        "accuracy_with_inline_revision": sum(with_trace) / len(with_trace) if with_trace else nan,
        "accuracy_without_inline_revision": sum(without) / len(without) if without else nan,
    }


def correction_metrics(draft_rewards: list[list[float]], revision_rewards: list[list[float]]) -> dict[str, Any]:
    """wrong->right and right->right rates, plus the fresh-resample reference for wrong drafts."""
    wrong = right = fixed = kept = 0
    resample: list[float] = []
    for drs, rrs in zip(draft_rewards, revision_rewards):
        for i, (d, r) in enumerate(zip(drs, rrs)):
            if d >= 1.0:
                right += 1
                kept += r >= 1.0
            else:
                wrong += 1
                fixed += r >= 1.0
                others = drs[:i] + drs[i + 1 :]
                if others:
                    resample.append(sum(others) / len(others))
    nan = float("nan")
    return {
        "wrong_drafts": wrong,
        "right_drafts": right,
        "correction_rate": fixed / wrong if wrong else nan,  # wrong -> right after the start-over phrase
        "right_to_right": kept / right if right else nan,  # right stays right after the rephrase phrase
        # For a wrong draft: accuracy of the other samples of the same question. A reviser that only
        # resamples would fix wrong drafts at this rate; a real reviser should beat it.
        "resample_accuracy_on_wrong": sum(resample) / len(resample) if resample else nan,
    }


def format_table(metrics: dict[str, Any], title: str = "") -> str:
    """The console table: one metric per row."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            unit = "s" if key == "seconds" else ""
            value = ", ".join(f"{k} {v}{unit}" for k, v in value.items())
        elif isinstance(value, float):
            value = "n/a" if math.isnan(value) else f"{value:.4f}"
        rows.append((key, str(value)))
    width = max(len(k) for k, _ in rows)
    lines = [title] if title else []
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def evaluate_model(ctx: Any, model_name: str, questions: Sequence[Question], ec: EvalConfig,
                   output: Path) -> dict[str, Any]:
    """Load a model, evaluate it on `questions` of `ctx.task`, write the report to `output` and return it. A model
    trained by sdzero is evaluated with the control phrases it learned (its sdzero.json), unless flags say
    otherwise. `ctx`: a `sdzero.context.Context`."""
    generator = ctx.generator(model_name)
    t0 = time.perf_counter()
    phrases = ctx.phrases(model_name)
    report = evaluate(generator, ctx.task, questions, ctx.sampling(), ec, phrases, ctx.system_prompt, ctx.seed)
    report["control_phrases"] = phrases.to_dict()
    report["metrics"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_report(output, report, {**ctx.settings(), **asdict(ec), "model": model_name})
    return report


def write_report(path: Path, report: dict[str, Any], config: dict[str, Any]) -> None:
    atomic_write_json(path, {"config": config, **report})
