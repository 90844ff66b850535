"""`sdzero collect`: Phase-1 data for Self-Revision Training (../shared/SDZERO.md, "Phase 1").

For each Phase-1 question: n drafts, verified; n revisions per draft, each the same assistant turn
continued after sep + P_r + sep (P_r chosen by the draft's reward); revisions verified; correct ones kept
as tuples (x, y_init, r_init, P_r, y_revised).

Simplifications and choices, stated up front:
- Work goes in chunks of questions. Chunk c is sampled with seed (seed, c) and written atomically to
  chunks/chunk-NNNNN.jsonl, so a run stopped at any point resumes at the first missing chunk and ends
  with exactly the output of an uninterrupted run.
- Token ids of the draft and revision are stored with the text: SRT trains on the ids that were sampled,
  never on a re-tokenization.
- Revisions cut off at max_new_tokens are dropped by default (an unfinished answer that a lenient
  verifier happens to accept is not a demonstration worth imitating).
- Degenerate repeated tails (the same span of tokens three or more times at the end) are trimmed to one
  copy, then the revision is verified again.
- The cap on kept tuples stops collection at the first chunk boundary past the cap, then cuts to it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sdzero.chat import ControlPhrases, reviser_context_ids, text_ids
from sdzero.errors import SDZeroError
from sdzero.evaluate import build_prompts
from sdzero.files import atomic_write_json, atomic_write_jsonl, read_jsonl
from sdzero.generation import Generator, SamplingParams
from sdzero.tasks.base import Question, Task

KEPT_FILE = "kept.jsonl"
REQUIRED_COLUMNS = ("question_id", "prompt", "prompt_ids", "y_init_ids", "r_init", "control_phrase",
                    "y_revised_ids")


@dataclass
class CollectConfig:
    output_dir: str = field(default="outputs/phase1", metadata={"help": "Where the collected dataset goes."})
    drafts_per_question: int = field(default=1, metadata={"help": "Drafts sampled per question (paper: 1)."})
    revisions_per_draft: int = field(default=3, metadata={"help": "Revisions sampled per draft (paper: 3)."})
    revise_correct: bool = field(default=True, metadata={"help": "Also revise correct drafts with the rephrase "
                                                                   "phrase (paper: yes; official code: no)."})
    max_kept: int | None = field(default=None, metadata={"help": "Stop once this many tuples are kept."})
    dedup: bool = field(default=True, metadata={"help": "Drop a revision identical to one already kept for "
                                                          "the same question."})
    trim_repeats: bool = field(default=True, metadata={"help": "Trim degenerate repeated tails of drafts and "
                                                                 "revisions (then verify again)."})
    drop_truncated: bool = field(default=True, metadata={"help": "Drop revisions cut off at max_new_tokens."})
    chunk_size: int = field(default=32, metadata={"help": "Questions per resumable chunk."})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "Longest question prompt (error if over)."})
    max_reviser_tokens: int = field(default=2048, metadata={"help": "Longest reviser context; the draft is "
                                                                     "truncated to fit, never the question."})


def trim_repeated_tail(ids: Sequence[int], min_repeats: int = 3, max_period: int = 64) -> list[int]:
    """If the sequence ends with >= min_repeats back-to-back copies of one span, keep a single copy."""
    ids = list(ids)
    best_cut = len(ids)
    for period in range(1, max_period + 1):
        if period * min_repeats > len(ids):
            break
        unit = ids[len(ids) - period :]
        copies, end = 1, len(ids) - period
        while end - period >= 0 and ids[end - period : end] == unit:
            copies += 1
            end -= period
        if copies >= min_repeats:
            best_cut = min(best_cut, end + period)  # keep the first copy of the run
    return ids[:best_cut]


def _collect_chunk(generator: Generator, task: Task, questions: Sequence[Question], prompts: list[list[int]],
                   gc_sampling: SamplingParams, cfg: CollectConfig, phrases: ControlPhrases,
                   suffix: dict[float, list[int]], seed: int) -> tuple[list[dict], dict[str, int]]:
    tok = generator.tokenizer
    n_d, n_r = cfg.drafts_per_question, cfg.revisions_per_draft
    stats = dict(drafts=0, right_drafts=0, revised_wrong=0, revised_right=0, wrong_to_right=0, right_to_right=0,
                 kept_from_wrong=0, kept_from_right=0, generations=0, sampled_tokens=0, dropped_truncated=0,
                 dropped_duplicate=0, trimmed=0)
    draft_params = SamplingParams(gc_sampling.max_new_tokens, gc_sampling.temperature, gc_sampling.top_p, n=n_d)
    drafts = generator.generate(prompts, draft_params, seed=seed, desc="drafts")

    def clean(ids: list[int]) -> list[int]:
        if not cfg.trim_repeats:
            return ids
        trimmed = trim_repeated_tail(ids)
        stats["trimmed"] += len(trimmed) < len(ids)
        return trimmed

    flat = [(qi, clean(c.ids)) for qi, cs in enumerate(drafts) for c in cs]
    for cs in drafts:
        stats["generations"] += len(cs)
        stats["sampled_tokens"] += sum(c.num_tokens for c in cs)
    texts = [tok.decode(ids, skip_special_tokens=True) for _, ids in flat]
    # Batched: a code task runs these programs in parallel in its sandbox pool.
    draft_rewards = task.rewards([(questions[qi], t) for (qi, _), t in zip(flat, texts)])
    contexts, owners = [], []
    for (qi, ids), r in zip(flat, draft_rewards):
        stats["drafts"] += 1
        stats["right_drafts"] += int(r)
        if r >= 1.0 and not cfg.revise_correct:
            continue
        p = prompts[qi]
        ctx = reviser_context_ids(p, ids, suffix[r], cfg.max_reviser_tokens)
        contexts.append(ctx)
        kept_ids = ids[: len(ctx) - len(p) - len(suffix[r])]  # the draft as the reviser saw it
        owners.append((qi, kept_ids, tok.decode(kept_ids, skip_special_tokens=True), r))
    rev_params = SamplingParams(gc_sampling.max_new_tokens, gc_sampling.temperature, gc_sampling.top_p, n=n_r)
    revisions = generator.generate(contexts, rev_params, seed=seed + 1, desc="revisions")
    candidates = []  # (owner, revision ids, revision text)
    for owner, cs in zip(owners, revisions):
        branch = "right" if owner[3] >= 1.0 else "wrong"
        for c in cs:
            stats["generations"] += 1
            stats["sampled_tokens"] += c.num_tokens
            stats[f"revised_{branch}"] += 1
            if c.finish_reason == "length" and cfg.drop_truncated:
                stats["dropped_truncated"] += 1
                continue
            ids = clean(c.ids)
            candidates.append((owner, ids, tok.decode(ids, skip_special_tokens=True)))
    verified = task.rewards([(questions[o[0]], text) for o, _, text in candidates])
    kept: list[dict[str, Any]] = []
    seen: set[tuple[str, tuple[int, ...]]] = set()
    for ((qi, y_ids, y_text, r), ids, text), ok in zip(candidates, verified):
        if not ids or ok < 1.0:
            continue
        q = questions[qi]
        branch = "right" if r >= 1.0 else "wrong"
        stats[f"{branch}_to_right"] += 1
        key = (q.id, tuple(ids))
        if cfg.dedup and key in seen:
            stats["dropped_duplicate"] += 1
            continue
        seen.add(key)
        stats[f"kept_from_{branch}"] += 1
        kept.append({
            "question_id": q.id, "prompt": q.prompt, "answer": q.answer,
            "prompt_ids": prompts[qi], "y_init": y_text, "y_init_ids": y_ids, "r_init": r,
            "control_phrase": phrases.phrase(r), "y_revised": text, "y_revised_ids": ids,
            "prompt_tokens": len(prompts[qi]), "y_init_tokens": len(y_ids), "y_revised_tokens": len(ids),
        })
    return kept, stats


def collect(generator: Generator, task: Task, questions: Sequence[Question], sampling: SamplingParams,
            cfg: CollectConfig, phrases: ControlPhrases, system_prompt: str | None = None, seed: int = 0,
            meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) a collection into cfg.output_dir; returns the summary written to sdzero.json."""
    if not questions:
        raise SDZeroError("no Phase-1 questions: set --phase1_size")
    if cfg.drafts_per_question < 1 or cfg.revisions_per_draft < 1 or cfg.chunk_size < 1:
        raise SDZeroError("drafts_per_question, revisions_per_draft and chunk_size must be >= 1")
    out = Path(cfg.output_dir)
    chunk_dir = out / "chunks"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    tok = generator.tokenizer
    signature = {"questions": [q.id for q in questions], "phrases": phrases.to_dict(), "seed": seed,
                 "sampling": asdict(sampling), "collect": {k: v for k, v in asdict(cfg).items() if k != "output_dir"}}
    sig_file = out / "collect_signature.json"
    if sig_file.is_file():
        if json.loads(sig_file.read_text()) != signature:
            raise SDZeroError(f"{out} holds a collection made with other settings or questions; use another "
                              "--output_dir (or delete it) rather than mixing the two")
    else:
        atomic_write_json(sig_file, signature)
    suffix = {r: text_ids(tok, phrases.suffix_text(r)) for r in (0.0, 1.0)}
    prompts = build_prompts(tok, questions, system_prompt, cfg.max_prompt_tokens)
    n_chunks = (len(questions) + cfg.chunk_size - 1) // cfg.chunk_size
    totals: dict[str, int] = {}
    kept: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for c in range(n_chunks):
        if cfg.max_kept is not None and len(kept) >= cfg.max_kept:
            break
        lo, hi = c * cfg.chunk_size, min(len(questions), (c + 1) * cfg.chunk_size)
        rows_file, stats_file = chunk_dir / f"chunk-{c:05d}.jsonl", chunk_dir / f"chunk-{c:05d}.stats.json"
        if rows_file.is_file() and stats_file.is_file():  # done in an earlier run
            rows, stats = read_jsonl(rows_file), json.loads(stats_file.read_text())
        else:
            rows, stats = _collect_chunk(generator, task, questions[lo:hi], prompts[lo:hi], sampling, cfg, phrases,
                                         suffix, seed=seed * 100_003 + 2 * c)
            atomic_write_jsonl(rows_file, rows)  # rows first: a chunk counts as done only with its stats
            atomic_write_json(stats_file, stats)
        kept.extend(rows)
        for k, v in stats.items():
            totals[k] = totals.get(k, 0) + v
        print(f"[collect] chunk {c + 1}/{n_chunks}: kept {len(rows)} (total {len(kept)})", flush=True)
    rows = kept[: cfg.max_kept] if cfg.max_kept is not None else kept
    atomic_write_jsonl(out / KEPT_FILE, rows)
    summary = {
        "control_phrases": phrases.to_dict(),
        "stats": summarize(totals, len(rows)),
        "seconds": round(time.perf_counter() - t0, 1),
        **(meta or {}),
    }
    atomic_write_json(out / "sdzero.json", summary)
    return summary


def summarize(t: dict[str, int], kept: int) -> dict[str, Any]:
    rate = lambda a, b: t.get(a, 0) / t[b] if t.get(b) else float("nan")  # noqa: E731
    return {
        **t,
        "draft_accuracy": rate("right_drafts", "drafts"),
        "wrong_to_right_rate": rate("wrong_to_right", "revised_wrong"),
        "right_to_right_rate": rate("right_to_right", "revised_right"),
        "kept": kept,
    }


def load_kept(data_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The kept tuples and the collection's metadata, with clear errors for unusable data."""
    data_dir = Path(data_dir)
    f = data_dir / KEPT_FILE
    if not f.is_file():
        raise SDZeroError(f"no collected data at {f}; run `sdzero collect --output_dir {data_dir}` first")
    rows = read_jsonl(f)
    if not rows:
        raise SDZeroError(f"{f} has no kept tuples: no revision was verified correct. Collect on more questions, "
                          "sample more revisions, or start from a stronger model")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise SDZeroError(f"{f} lacks the column(s) {missing}; it was not written by `sdzero collect`")
    from sdzero.config import read_meta

    return rows, read_meta(data_dir) or {}
