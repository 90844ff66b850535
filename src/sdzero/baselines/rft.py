"""RFT (rejection-sampling fine-tuning): sample k responses per question, keep the verified-correct ones,
fine-tune on them (../shared/SDZERO.md, "Baselines").

Simplifications, stated up front:
- One round: questions are taken in a seeded order, k samples each, until the generation budget (the
  `GenerationBudget` passed in) is spent
  (a question is sampled whole or not at all, so up to k-1 generations of the budget may stay unused).
- A kept sample is trained as chat(x) -> y <eot>, the prompt unsupervised: SRT's generation record with
  no draft, trained by the shared supervised loop (`sdzero.training.train_records`, as SRT).
- Identical correct responses to one question are kept once; responses cut at the token cap are dropped.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_text
from sdzero.generation import DEFAULT_BATCH_SIZE


@dataclass
class RFTConfig:
    output_dir: str = field(default="outputs/rft", metadata={"help": "Samples go to OUTPUT_DIR/samples.jsonl, "
                                                                      "the trained model to OUTPUT_DIR/model."})
    samples_per_question: int = field(default=4, metadata={"help": "k responses per question (paper: 4)."})
    drop_truncated: bool = field(default=True, metadata={"help": "Never keep a response cut at the token cap."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW peak learning rate."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Passes over the kept samples."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Samples per device per step."})
    max_length: int = field(default=1024, metadata={"help": "Longest prompt + response; longer ones are dropped."})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 (fp32 weights + bf16 autocast) | fp32."})
    resume: bool = field(default=True, metadata={"help": "Reuse OUTPUT_DIR's samples and checkpoints."})

    def validate(self) -> None:
        if self.samples_per_question < 1:
            raise SDZeroError(f"samples_per_question must be at least 1, not {self.samples_per_question}")


def select_correct(questions: Sequence[Any], completions: Sequence[Sequence[Any]],
                   rewards: Sequence[Sequence[float]], drop_truncated: bool = True) -> list[dict[str, Any]]:
    """The verified-correct samples, one record per distinct response of a question."""
    kept = []
    for q, cs, rs in zip(questions, completions, rewards):
        seen: set[tuple[int, ...]] = set()
        for c, r in zip(cs, rs):
            if r < 1.0 or (drop_truncated and c.finish_reason == "length") or tuple(c.ids) in seen:
                continue
            seen.add(tuple(c.ids))
            kept.append({"question_id": q.id, "response_ids": list(c.ids), "response": c.text})
    return kept


def run_rft(model_name: str, task: Any, questions: Sequence[Any], cfg: RFTConfig, sampling: Any, budget: Any,
            system_prompt: str | None = None, generation_backend: str = "hf",
            generation_batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, dtype: str = "auto") -> dict[str, Any]:
    """Sample within `budget` (a GenerationBudget, charged here), keep, train, save OUTPUT_DIR/model."""
    from dataclasses import replace

    from sdzero.chat import turn_end_id
    from sdzero.config import read_meta
    from sdzero.chat import build_prompts
    from sdzero.generation import make_generator
    from sdzero.models import load_model_and_tokenizer
    from sdzero.training import SFTConfig, load_model_to_train, loss_history, save_on_main_process, sft_record, \
        train_records

    cfg.validate()
    out = Path(cfg.output_dir)
    done = read_meta(out / "model")
    if cfg.resume and done and "rft" in done:
        budget.charge(done["generations"], done["sampled_tokens"], "rft (done before)")
        return done
    if not questions:
        raise SDZeroError("RFT has no questions to sample")
    t0 = time.perf_counter()
    k = cfg.samples_per_question
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    n_questions = budget.take(len(questions) * k) // k  # an unlimited budget: every question once
    if n_questions < 1:
        raise SDZeroError(f"the generation budget leaves room for no question at k={k}")
    chosen = [questions[i] for i in order[:n_questions]]
    model, tok = load_model_and_tokenizer(model_name, dtype)
    generator = make_generator(generation_backend, model, tok, batch_size=generation_batch_size)
    prompts = build_prompts(tok, chosen, system_prompt, cfg.max_length)
    completions = generator.generate(prompts, replace(sampling, n=k), seed=seed, desc="RFT samples")
    budget.spend([c for cs in completions for c in cs], "rft samples")
    flat = task.rewards([(q, c.text) for q, cs in zip(chosen, completions) for c in cs])
    rewards = [flat[i * k : (i + 1) * k] for i in range(len(chosen))]
    kept = select_correct(chosen, completions, rewards, cfg.drop_truncated)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
    if not kept:
        raise SDZeroError(f"RFT kept no sample: none of the {len(chosen) * k} responses was verified correct")
    by_id = {q.id: p for q, p in zip(chosen, prompts)}
    eot = turn_end_id(tok)
    records = [sft_record(by_id[s["question_id"]], s["response_ids"] + [eot]) for s in kept
               if len(by_id[s["question_id"]]) + len(s["response_ids"]) + 1 <= cfg.max_length]
    del model, generator
    model = load_model_to_train(model_name)  # fp32 master weights, bf16 autocast (as SRT)
    train_cfg = SFTConfig(output_dir=str(out), learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs,
                          per_device_train_batch_size=cfg.per_device_train_batch_size, max_length=cfg.max_length,
                          precision=cfg.precision, resume=cfg.resume, seed=seed)
    history = train_records(model, records, train_cfg, tok.pad_token_id, "rft")
    summary = {
        "base_model": model_name, "rft": asdict(cfg), "questions_sampled": len(chosen),
        "generations": len(chosen) * k, "sampled_tokens": sum(c.num_tokens for cs in completions for c in cs),
        "sample_accuracy": sum(flat) / len(flat), "kept": len(kept), "records": len(records),
        "seconds": round(time.perf_counter() - t0, 1),
        "loss_history": loss_history(history),
    }
    save_on_main_process(model, tok, out / "model", summary)
    return summary


def train(ctx: Any, questions: Sequence[Any], budget: Any, cfg: RFTConfig) -> list[dict[str, Any]]:
    """`sdzero compare`'s entry: RFT from the context's model within `budget`; its accuracy-vs-generations curve."""
    g = ctx.generation
    summary = run_rft(ctx.model_config.model, ctx.task, questions, cfg, ctx.sampling(), budget, ctx.system_prompt,
                      g.backend, g.batch_size, ctx.seed, ctx.model_config.dtype)
    return [{"generations": summary["generations"], "train_accuracy": summary["sample_accuracy"]}]
