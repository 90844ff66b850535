"""Token-level self-localization: where in a response the teacher disagrees with the student.

Phase 2 writes, for a sample of its responses, the per-token KL(student || teacher) over the full
vocabulary. The paper's observation: on wrong responses the KL concentrates on a few tokens (the error);
on correct ones it is flat. `concentration` measures that (share of a response's total KL carried by its
top 10% of tokens), and `render_html` draws the heat-map, correct and wrong responses side by side.
"""

from __future__ import annotations

import html
import math
from typing import Any, Sequence


def concentration(kl: Sequence[float], top_share: float = 0.1) -> float:
    """Share of the total KL on the top `top_share` of tokens (at least one): 1.0 = all on a few tokens,
    about `top_share` = spread evenly."""
    values = sorted((max(0.0, v) for v in kl), reverse=True)
    total = sum(values)
    if not values or total <= 0:
        return math.nan
    k = max(1, round(len(values) * top_share))
    return sum(values[:k]) / total


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean per-token KL and mean concentration, for correct and for wrong responses."""
    out: dict[str, float] = {}
    for label, want in (("correct", True), ("wrong", False)):
        group = [r for r in rows if (r["reward"] >= 1.0) == want and r["kl"]]
        conc = [c for c in (concentration(r["kl"]) for r in group) if not math.isnan(c)]
        toks = [v for r in group for v in r["kl"]]
        out[f"{label}_responses"] = len(group)
        out[f"{label}_mean_kl"] = sum(toks) / len(toks) if toks else math.nan
        out[f"{label}_top10_share"] = sum(conc) / len(conc) if conc else math.nan
    # The first response token is where the teacher has just read its control phrase (or demonstration):
    # how often it carries a response's largest KL, and its mean KL against the later tokens'.
    rows = [r for r in rows if r["kl"]]
    later = [v for r in rows for v in r["kl"][1:]]
    out["first_token_is_max"] = sum(max(range(len(r["kl"])), key=r["kl"].__getitem__) == 0 for r in rows)
    out["first_token_mean_kl"] = sum(r["kl"][0] for r in rows) / len(rows) if rows else math.nan
    out["later_tokens_mean_kl"] = sum(later) / len(later) if later else math.nan
    return out


def page_scale(rows: Sequence[dict[str, Any]]) -> float:
    """The KL drawn as full red: the 98th percentile of the page's token values (one bright token does not
    wash out the rest). A run's pages share the first page's scale, so they compare by eye."""
    values = sorted(v for r in rows for v in r["kl"])
    return (values[min(len(values) - 1, int(0.98 * len(values)))] if values else 0.0) or 1.0


def _response_html(row: dict[str, Any], scale: float) -> str:
    spans = []
    for tok, v in zip(row["tokens"], row["kl"]):
        a = min(1.0, max(0.0, v) / scale)
        text = html.escape(tok).replace("\n", "&#8629;<br>")
        value = f'<sub>{v:.2f}</sub>' if a >= 0.25 else ""  # the value of every visibly coloured token, on the page
        spans.append(f'<span title="KL {v:.4f}" style="background: rgba(220, 40, 30, {a:.3f})">{text}{value}</span>')
    right = row["reward"] >= 1.0
    conc = concentration(row["kl"])
    gold = "" if right or row.get("answer") in (None, "") else \
        f' &middot; gold answer: <b>{html.escape(str(row["answer"]))}</b>'
    read = f'<div class="meta">the teacher read: &laquo;{html.escape(row["teacher_read"])}&raquo;</div>' \
        if row.get("teacher_read") else ""
    return (f'<div class="resp"><div class="meta">{"correct" if right else "wrong"}{gold} &middot; {len(row["kl"])} '
            f'tokens &middot; mean KL {sum(row["kl"]) / max(1, len(row["kl"])):.4f} &middot; top-10% share '
            f'{conc:.2f}</div>{read}<div class="q">{html.escape(row["question"])}</div>'
            f'<div class="y">{"".join(spans)}</div></div>')


def _legend(scale: float) -> str:
    return (f'<div class="legend">per-token KL(student &#8214; teacher), full vocabulary: <span class="bar"></span> '
            f'0 &rarr; {scale:.3g} and above (the same scale on every page of this run; values shown under '
            f'tokens from {0.25 * scale:.3g})</div>')


def render_html(rows: Sequence[dict[str, Any]], title: str, scale: float | None = None) -> str:
    """One self-contained page: correct responses on the left, wrong on the right (with the gold answer);
    darker = larger KL on one colour scale (`scale`, default `page_scale(rows)`), with its legend. A row may
    say what the teacher read after the response (`teacher_read`: the control phrase)."""
    scale = scale if scale is not None and scale > 0 else page_scale(rows)
    cols = []
    for label, want in (("Correct responses", True), ("Wrong responses", False)):
        body = "".join(_response_html(r, scale) for r in rows if (r["reward"] >= 1.0) == want) or "<p>none</p>"
        cols.append(f'<div class="col"><h2>{label}</h2>{body}</div>')
    s = summarize(rows)
    summary = (f"mean per-token KL: correct {s['correct_mean_kl']:.4f}, wrong {s['wrong_mean_kl']:.4f}; "
               f"share of KL on the top 10% of tokens: correct {s['correct_top10_share']:.2f}, "
               f"wrong {s['wrong_top10_share']:.2f}")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body {{ font-family: sans-serif; margin: 1.5em; }} .cols {{ display: flex; gap: 2em; }} .col {{ flex: 1; }}
.resp {{ border: 1px solid #ccc; padding: .6em; margin-bottom: 1em; }} .meta {{ color: #555; font-size: 85%; }}
.q {{ font-style: italic; margin: .3em 0; }} .y {{ font-family: monospace; white-space: pre-wrap; line-height: 1.9; }}
sub {{ font-size: 60%; color: #333; }} .legend {{ margin: .5em 0 1em; }}
.bar {{ display: inline-block; width: 12em; height: .9em; vertical-align: middle;
        background: linear-gradient(to right, rgba(220, 40, 30, 0), rgba(220, 40, 30, 1)); border: 1px solid #ccc; }}
</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(summary)}. Hover a token for its exact value.</p>
{_legend(scale)}<div class="cols">{"".join(cols)}</div></body></html>
"""


# --- the answer-token probe: is the teacher pushing toward or away from the response's own answer? ---------

PROBE_CLASSES = ("wrong", "right")
_PROBE_FIELDS = ("responses", "teacher_lp", "student_lp", "teacher_above", "kl_first", "kl_answer", "kl_total")


def token_covering(decode: Any, ids: Sequence[int], char: int) -> int:
    """The first token j of `ids` whose decoded prefix decode(ids[:j + 1]) reaches past character `char` (the
    token that carries it), len(ids) when none does. Prefix lengths grow with j, so a bisection: O(log n)
    decodes, not one per token (a 4,759-token trace: 27 ms against 1.9 s, benchmarks/token_positions.py)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(list(ids[: mid + 1]))) > char:
            hi = mid
        else:
            lo = mid + 1
    return lo


def answer_token_positions(decode: Any, ids: Sequence[int], answer: str | None) -> list[int]:
    """Indices of the tokens of `ids` that carry the last occurrence of `answer` in their decoded text ([] when
    it does not occur): from the token carrying its first character to the one carrying its last."""
    text = decode(list(ids)) if answer else ""
    at = text.rfind(answer) if answer else -1
    if at < 0:
        return []
    return list(range(token_covering(decode, ids, at), token_covering(decode, ids, at + len(answer) - 1) + 1))


def answer_probe_row(right: bool, positions: Sequence[int], teacher_lp: Sequence[float],
                     student_lp: Sequence[float], kl: Sequence[float]) -> list[float]:
    """One response's contribution to a step's answer-token log: a vector to sum over responses (and
    processes), read by `answer_probe_metrics`. teacher_lp / student_lp / kl are per target token."""
    kl = [max(0.0, float(v)) for v in kl]
    row = [0.0] * (2 * len(_PROBE_FIELDS))
    base = len(_PROBE_FIELDS) * PROBE_CLASSES.index("right" if right else "wrong")
    row[base + 4] = kl[0] if kl and 0 not in positions else 0.0  # the first token, unless it is the answer
    row[base + 5] = sum(kl[j] for j in positions)
    row[base + 6] = sum(kl)
    if positions:
        t, s = sum(teacher_lp[j] for j in positions), sum(student_lp[j] for j in positions)
        row[base : base + 4] = [1.0, t, s, float(t > s)]
    return row


def answer_probe_metrics(total: Sequence[float]) -> dict[str, float | None]:
    """Per class (wrong / right responses): the mean log-probability the teacher and the student give the
    response's own final-answer tokens (summed over those tokens), the share of responses where the teacher's
    is higher, and the shares of the class's divergence on the first token, the answer tokens and the rest."""
    out: dict[str, float | None] = {}
    n_fields = len(_PROBE_FIELDS)
    for c, name in enumerate(PROBE_CLASSES):
        n, t, s, above, first, answer, kl = total[c * n_fields : (c + 1) * n_fields]
        out[f"answer_responses_{name}"] = int(n)  # responses whose answer was found among their tokens
        out[f"answer_logprob_teacher_{name}"] = t / n if n else None
        out[f"answer_logprob_student_{name}"] = s / n if n else None
        out[f"teacher_above_student_{name}"] = above / n if n else None
        out[f"kl_share_first_{name}"] = first / kl if kl > 0 else None
        out[f"kl_share_answer_{name}"] = answer / kl if kl > 0 else None
        out[f"kl_share_rest_{name}"] = (kl - first - answer) / kl if kl > 0 else None
    return out
