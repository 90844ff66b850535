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
- Long degenerate repeated tails (one span three or more times at the end, the copies covering >= 16 tokens
  and >= 32 characters) are trimmed to one copy in what is stored. Rewards are always of the untrimmed text
  (what the model wrote); a revision is kept only if its trimmed text verifies too.
- The cap on kept tuples stops collection at the first chunk boundary past the cap, then cuts to it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sdzero.chat import ControlPhrases, build_prompts, reviser_context_ids
from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json, atomic_write_jsonl, read_jsonl
from sdzero.generation import Generator, SamplingParams
from sdzero.logs import info
from sdzero.runfolder import KEPT_FILE
from sdzero.tasks.base import Question, Task



@dataclass
class CollectConfig:
    output_dir: str = field(default="outputs/phase1", metadata={"help": "Where the collected dataset goes."})
    drafts_per_question: int = field(default=1, metadata={"help": "Drafts sampled per question (paper: 1)."})
    revisions_per_draft: int = field(default=3, metadata={"help": "Revisions sampled per draft (paper: 3); 0 with "
                                                                  "pair_right_drafts keeps only draft pairs."})
    revise_correct: bool = field(default=True, metadata={"help": "Also revise correct drafts with the rephrase "
                                                                   "phrase (paper: yes; official code: no)."})
    pair_right_drafts: bool = field(default=False, metadata={
        "help": "With several drafts per question, also use the question's right drafts as revisions: (wrong draft, "
                "start-over phrase, each right draft), and with revise_correct (right draft, rephrase phrase, "
                "another right draft). Any right answer to x is a right revision, written in the generator's own "
                "style. Not in the paper, which keeps only revisions sampled after the phrase; costs no "
                "generation."})
    max_kept: int | None = field(default=None, metadata={"help": "Stop once this many tuples are kept."})
    dedup: bool = field(default=True, metadata={"help": "Drop a tuple identical to one already kept (same "
                                                          "question, draft and revision)."})
    trim_repeats: bool = field(default=True, metadata={"help": "Trim degenerate repeated tails of drafts and "
                                                                 "revisions (then verify again)."})
    drop_truncated: bool = field(default=True, metadata={"help": "Drop revisions cut off at max_new_tokens."})
    chunk_size: int = field(default=32, metadata={"help": "Questions per resumable chunk."})
    max_prompt_tokens: int = field(default=1024, metadata={"help": "Longest question prompt (error if over)."})
    max_reviser_tokens: int = field(default=2048, metadata={"help": "Longest reviser context; the draft is "
                                                                     "truncated to fit, never the question."})

    def validate(self) -> None:
        if self.drafts_per_question < 1 or self.revisions_per_draft < 0 or self.chunk_size < 1:
            raise SDZeroError("drafts_per_question and chunk_size must be >= 1, revisions_per_draft >= 0")
        if self.revisions_per_draft == 0 and not self.pair_right_drafts:
            raise SDZeroError("revisions_per_draft=0 keeps nothing unless pair_right_drafts is on")
        if self.pair_right_drafts and self.drafts_per_question < 2:
            raise SDZeroError("pair_right_drafts needs drafts_per_question >= 2 (a wrong and a right draft of one "
                              "question)")


def trim_repeated_tail(ids: Sequence[int], decode: Callable[[list[int]], str] | None = None, min_repeats: int = 3,
                       max_period: int = 64, min_tokens: int = 16, min_chars: int = 32) -> list[int]:
    """If the sequence ends in a long degenerate loop, keep one copy of its unit.

    A loop is >= min_repeats back-to-back copies of one span, and only a long one counts: the copies removed
    must cover >= min_tokens tokens and (when `decode` is given) >= min_chars characters. Short runs are
    ordinary text: digits are single tokens, so "1000" ends in three equal tokens.
    """
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
        cut = end + period  # keep the first copy of the run
        if copies >= min_repeats and len(ids) - cut >= min_tokens and cut < best_cut:
            if decode is None or len(decode(ids[cut:])) >= min_chars:
                best_cut = cut
    return ids[:best_cut]


def _collect_chunk(generator: Generator, task: Task, questions: Sequence[Question], prompts: list[list[int]],
                   gc_sampling: SamplingParams, cfg: CollectConfig, phrases: ControlPhrases,
                   suffix: dict[float, list[int]], seed: int) -> tuple[list[dict], dict[str, int]]:
    tok = generator.tokenizer
    n_d, n_r = cfg.drafts_per_question, cfg.revisions_per_draft
    stats = dict(drafts=0, right_drafts=0, revised_wrong=0, revised_right=0, wrong_to_right=0, right_to_right=0,
                 kept_from_wrong=0, kept_from_right=0, kept_draft_pairs_wrong=0, kept_draft_pairs_right=0,
                 generations=0, sampled_tokens=0, dropped_truncated=0, dropped_duplicate=0, trimmed=0)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731

    def clean(ids: list[int]) -> list[int]:
        if not cfg.trim_repeats:
            return ids
        trimmed = trim_repeated_tail(ids, decode)
        stats["trimmed"] += len(trimmed) < len(ids)
        return trimmed

    draft_params = SamplingParams(gc_sampling.max_new_tokens, gc_sampling.temperature, gc_sampling.top_p, n=n_d)
    drafts = generator.generate(prompts, draft_params, seed=seed, desc="drafts")
    flat = [(qi, c) for qi, cs in enumerate(drafts) for c in cs]
    stats["generations"] += len(flat)
    stats["sampled_tokens"] += sum(c.num_tokens for _, c in flat)
    # Rewards of what the model wrote (untrimmed); batched: a code task runs them in parallel in its sandbox.
    draft_rewards = task.rewards([(questions[qi], c.text) for qi, c in flat])
    contexts, owners = [], []  # owner: (question index, draft ids as the reviser saw them, draft text, reward)
    right_drafts: dict[int, list[tuple[list[int], str]]] = {}
    for (qi, c), r in zip(flat, draft_rewards):
        stats["drafts"] += 1
        stats["right_drafts"] += int(r)
        ids = clean(c.ids)
        if r >= 1.0 and not (cfg.drop_truncated and c.finish_reason == "length"):
            right_drafts.setdefault(qi, []).append((ids, decode(ids)))
        p = prompts[qi]
        ctx = reviser_context_ids(p, ids, suffix[r], cfg.max_reviser_tokens)
        kept_ids = ids[: len(ctx) - len(p) - len(suffix[r])]  # the draft as the reviser saw it
        owner = (qi, kept_ids, decode(kept_ids), r)
        if r < 1.0 or cfg.revise_correct:
            contexts.append(ctx)
            owners.append(owner)
    revisions = []
    if contexts and n_r > 0:
        rev_params = SamplingParams(gc_sampling.max_new_tokens, gc_sampling.temperature, gc_sampling.top_p, n=n_r)
        revisions = generator.generate(contexts, rev_params, seed=seed + 1, desc="revisions")
    sampled = []  # (owner, completion)
    for owner, cs in zip(owners, revisions):
        branch = "right" if owner[3] >= 1.0 else "wrong"
        for c in cs:
            stats["generations"] += 1
            stats["sampled_tokens"] += c.num_tokens
            stats[f"revised_{branch}"] += 1
            if c.finish_reason == "length" and cfg.drop_truncated:
                stats["dropped_truncated"] += 1
                continue
            sampled.append((owner, c))
    verified = task.rewards([(questions[o[0]], c.text) for o, c in sampled])
    candidates, recheck = [], []  # (owner, revision ids, revision text, source), each verified right
    for (owner, c), ok in zip(sampled, verified):
        if ok >= 1.0:
            stats["right_to_right" if owner[3] >= 1.0 else "wrong_to_right"] += 1
            ids = clean(c.ids)
            if len(ids) < len(c.ids):
                recheck.append(len(candidates))
            candidates.append((owner, ids, decode(ids), "sampled"))
    if recheck:  # a trimmed revision is a demonstration only if its trimmed text still verifies
        again = task.rewards([(questions[candidates[i][0][0]], candidates[i][2]) for i in recheck])
        wrong_now = {i for i, ok in zip(recheck, again) if ok < 1.0}
        candidates = [x for i, x in enumerate(candidates) if i not in wrong_now]
    if cfg.pair_right_drafts:  # a right draft of the same question is a right revision
        nth_right: dict[int, int] = {}
        for owner in owners:
            qi, y_ids, _, r = owner
            if r < 1.0:  # every right draft, after "start over"
                candidates += [(owner, ids, text, "draft") for ids, text in right_drafts.get(qi, [])]
                continue
            # a right draft (revise_correct): one other right draft, after "rephrase", in turn
            others = [(ids, text) for ids, text in right_drafts.get(qi, []) if ids != y_ids]
            n = nth_right[qi] = nth_right.get(qi, -1) + 1
            if others:
                candidates.append((owner, *others[n % len(others)], "draft"))
    kept: list[dict[str, Any]] = []
    seen: set[tuple[str, tuple[int, ...]]] = set()
    for (qi, y_ids, y_text, r), ids, text, source in candidates:
        if not ids:
            continue
        q = questions[qi]
        key = (q.id, tuple(y_ids), tuple(ids))
        if cfg.dedup and key in seen:
            stats["dropped_duplicate"] += 1
            continue
        seen.add(key)
        branch = "right" if r >= 1.0 else "wrong"
        stats[f"kept_draft_pairs_{branch}" if source == "draft" else f"kept_from_{branch}"] += 1
        kept.append({
            "question_id": q.id, "prompt": q.prompt, "answer": q.answer,
            "prompt_ids": prompts[qi], "y_init": y_text, "y_init_ids": y_ids, "r_init": r,
            "control_phrase": phrases.phrase(r), "y_revised": text, "y_revised_ids": ids,
            "revision_source": source,
            "prompt_tokens": len(prompts[qi]), "y_init_tokens": len(y_ids), "y_revised_tokens": len(ids),
        })
    return kept, stats


def collect(generator: Generator, task: Task, questions: Sequence[Question], sampling: SamplingParams,
            cfg: CollectConfig, phrases: ControlPhrases, system_prompt: str | None = None, seed: int = 0,
            meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) a collection into cfg.output_dir; returns the summary written to sdzero.json."""
    if not questions:
        raise SDZeroError("no Phase-1 questions: set --phase1_size")
    cfg.validate()
    out = Path(cfg.output_dir)
    chunk_dir = out / "chunks"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    tok = generator.tokenizer
    task.add_control_phrases(phrases)  # a response is graded by what follows its last control phrase
    signature = {"questions": [q.id for q in questions], "phrases": phrases.to_dict(), "seed": seed,
                 "sampling": asdict(sampling), "collect": {k: v for k, v in asdict(cfg).items() if k != "output_dir"}}
    sig_file = out / "collect_signature.json"
    if sig_file.is_file():
        if json.loads(sig_file.read_text()) != signature:
            raise SDZeroError(f"{out} holds a collection made with other settings or questions; use another "
                              "--output_dir (or delete it) rather than mixing the two")
    else:
        atomic_write_json(sig_file, signature)
    suffix = phrases.suffix_ids(tok)
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
        info(f"[collect] chunk {c + 1}/{n_chunks}: kept {len(rows)} (total {len(kept)})")
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
