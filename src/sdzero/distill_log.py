"""What a Phase-2 step records besides its loss: the KL on right and on wrong responses, the answer-token
log (the teacher's and the student's probability of a response's own final answer, where the KL mass sits),
the step's metrics row (OUTPUT_DIR/log.jsonl) and the self-localization heat-map pages (OUTPUT_DIR/selfloc).
Nothing here changes what is trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from sdzero.files import atomic_write_text
from sdzero.selfloc import answer_probe_metrics, answer_probe_row, page_scale, render_html


class StepLog:
    """Sums over one step's micro-batches (then over processes, in `metrics`)."""

    def __init__(self, rewards: Sequence[float], answers: Sequence[list[int]], device: Any,
                 heatmap_rows: set[int] | frozenset[int] = frozenset()):
        self.rewards, self.answers, self.device, self.heatmap_rows = list(rewards), list(answers), device, heatmap_rows
        self.kl = torch.zeros(4, device=device, dtype=torch.float64)  # KL and tokens on right, then on wrong
        self.probe = [0.0] * len(answer_probe_row(True, [], [], [], []))  # the answer-token log, summed
        self.heatmap: list[tuple[int, Any, Any]] = []  # (row, pair, teacher hidden rows) for the heat-map page
        self.teacher_head: Any = None

    def add(self, lo: int, chunk: Sequence[Any], weight: Any, per_token: Any, s_lp: Any, t_lp: Any, t_hidden: Any,
            t_head: Any) -> None:
        """Micro-batch of responses lo .. lo + len(chunk) - 1 (weight, per_token, *_lp, t_hidden: per token)."""
        lengths = torch.tensor([p.num_tokens for p in chunk], device=self.device)
        right = torch.tensor([r >= 1.0 for r in self.rewards[lo : lo + len(chunk)]], dtype=torch.float64,
                             device=self.device).repeat_interleave(lengths)
        w = weight.double()
        v = per_token.detach().double() * w
        self.kl += torch.stack([(v * right).sum(), (w * right).sum(), (v * (1 - right)).sum(),
                                (w * (1 - right)).sum()])
        kl, s_lp, t_lp = per_token.detach().float().tolist(), s_lp.tolist(), t_lp.tolist()
        start = 0
        for j, p in enumerate(chunk):
            span = slice(start, start + p.num_tokens)
            row = answer_probe_row(self.rewards[lo + j] >= 1.0, self.answers[lo + j], t_lp[span], s_lp[span],
                                   kl[span])
            self.probe = [a + x for a, x in zip(self.probe, row)]
            if lo + j in self.heatmap_rows:
                self.heatmap.append((lo + j, p, t_hidden[span]))
                self.teacher_head = t_head
            start += p.num_tokens

    def metrics(self, acc: Any, completions: Sequence[Any], global_tokens: float, grad_norm: Any,
                learning_rate: float, step: int, wall: float, t_gen: float) -> dict[str, Any]:
        """The step's row of log.jsonl, summed over every process."""
        stats = torch.tensor([len(completions), sum(self.rewards), sum(c.num_tokens for c in completions),
                              sum(c.finish_reason == "length" for c in completions)], device=self.device,
                             dtype=torch.float64)
        kl = acc.reduce(self.kl, "sum")
        stats = acc.reduce(stats, "sum")
        probe = acc.reduce(torch.tensor(self.probe, device=self.device, dtype=torch.float64), "sum").tolist()
        n = stats[0].item()
        return {
            "step": step + 1,
            "loss": (kl[0] + kl[2]).item() / global_tokens if global_tokens else None,
            "reward": stats[1].item() / n,
            "response_length": stats[2].item() / n,
            "clipped_share": stats[3].item() / n,
            "responses": int(n),  # sampled this step, all processes: the generation budget's unit
            "sampled_tokens": int(stats[2].item()),
            "kl_correct": kl[0].item() / kl[1].item() if kl[1].item() else None,
            "kl_wrong": kl[2].item() / kl[3].item() if kl[3].item() else None,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "learning_rate": learning_rate,
            "tokens": int(global_tokens),
            "tokens_per_s": global_tokens / max(wall - t_gen, 1e-9),
            "tokens_per_s_with_generation": global_tokens / max(wall, 1e-9),
            "generation_s": round(t_gen, 2),
            "step_s": round(wall, 2),
            **answer_probe_metrics(probe),
        }


class Heatmaps:
    """Self-localization pages at the first and the last step (and every `every` steps): for up to `samples`
    responses, half right and half wrong when there are both, the per-token full-vocabulary KL."""

    def __init__(self, folder: Path, samples: int, every: int, max_steps: int, decode_token: Callable[[int], str],
                 teacher_read: Callable[[float], str] | None = None):
        self.folder, self.samples, self.every, self.max_steps = folder, samples, every, max_steps
        self.decode_token = decode_token
        self.teacher_read = teacher_read  # reward -> what the teacher read after the response (its phrase)
        self.scale: float | None = None  # the colour scale, fixed by the first page (a resumed run: by its page)

    def rows_for(self, step: int, rewards: Sequence[float]) -> set[int]:
        """The responses of step `step` (0-based) that go on a page; none when the step has no page."""
        s = step + 1
        if self.samples < 1 or not (s == 1 or s == self.max_steps or (self.every > 0 and s % self.every == 0)):
            return set()
        right = [i for i, r in enumerate(rewards) if r >= 1.0]
        wrong = [i for i, r in enumerate(rewards) if r < 1.0]
        take_w = min(len(wrong), max(self.samples // 2, self.samples - len(right)))
        take_r = min(len(right), self.samples - take_w)
        return set(right[:take_r] + wrong[:take_w])

    def resume(self) -> None:
        """A resumed run keeps the colour scale of its first page."""
        first = sorted(self.folder.glob("step-*.jsonl"))
        if first:
            self.scale = page_scale([json.loads(x) for x in first[0].read_text().splitlines()])

    def write(self, step: int, log: StepLog, kl_of: Callable[[list[Any], Any, Any], list[float]],
              questions: Sequence[Any]) -> None:
        """kl_of(pairs, teacher hidden rows, teacher head): the per-token KL of those responses, in order."""
        if not log.heatmap:
            return
        pairs = [pair for _, pair, _ in log.heatmap]
        kl = kl_of(pairs, torch.cat([t for _, _, t in log.heatmap]), log.teacher_head)
        rows, start = [], 0
        for row, pair, _ in log.heatmap:
            q = questions[row]
            reward = log.rewards[row]
            rows.append({"question_id": q.id, "question": q.prompt, "answer": q.answer, "reward": reward,
                         "teacher_read": self.teacher_read(reward) if self.teacher_read else None,
                         "tokens": [self.decode_token(t) for t in pair.target_ids],
                         "kl": [round(x, 5) for x in kl[start : start + pair.num_tokens]]})
            start += pair.num_tokens
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.scale is None:
            self.scale = page_scale(rows)
        name = f"step-{step + 1:06d}"
        atomic_write_text(self.folder / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_text(self.folder / f"{name}.html", render_html(rows, f"Self-localization at step {step + 1}: "
                                                                           "per-token KL(student || teacher)",
                                                                           scale=self.scale))
