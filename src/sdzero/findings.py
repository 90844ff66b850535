"""`sdzero findings`: the paper's checkable claims as verdicts, read from a `sdzero compare` folder.

For each finding: the paper's number, ours (mean and spread over seeds), a 95% interval and a verdict by
RULE below, which was written down before any result was read and which findings.md repeats.

Simplifications, stated here: the pooled interval treats the (question, seed) pairs as independent, though
seeds share their questions. Findings (d) self-evolution, (e) Phase 2 from the base model, (h) each SRT loss
term alone and (i) sample efficiency need runs that `sdzero compare` does not make; their rows say
"not measured" until they are run.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json, atomic_write_text
from sdzero.selfloc import concentration

HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"
SDZERO_STAGES = ("base", "srt", "sdzero")  # evaluated inside each seed's `sdzero run` folder
BASELINES = ("rft", "grpo", "sdft")
TOP_SHARE = 0.10  # (c): the share of a response's KL carried by its top 10% of tokens
HALVES = 2 / 3  # (b): "roughly halves" = at most this ratio
RULE = """\
- A difference between two methods is paired: per held-out question and seed, method A's mean reward over
  its k samples minus method B's on the same question and seed; the interval is a percentile bootstrap
  (10,000 resamples of those pairs, seeded). Unpaired quantities (heat-map rows, draft counts) resample each
  group apart.
- **holds**: the interval lies above zero (the claimed side); **does not hold**: it lies below zero;
  **inconclusive**: it crosses zero. A finding with several parts holds when every part holds, does not
  hold when any part does not, and is inconclusive otherwise (a part not measured counts as inconclusive).
- "Roughly halves" is a ratio of at most 2/3 in every seed (does not hold: above 2/3 in every seed).
- (a) "most of the gain": SRT minus base above zero, and (SRT - base) - (SD-Zero - SRT) above zero per
  (question, seed), i.e. SRT's gain at least half of SD-Zero's whole gain over the base model."""


@dataclass
class FindingsConfig:
    compare_dir: str = field(default="outputs/compare", metadata={"help": "Output folder of `sdzero compare`."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Where findings.md and findings.json go; default: COMPARE_DIR/report."})
    bootstrap: int = field(default=10_000, metadata={"help": "Bootstrap resamples per interval."})

    def validate(self) -> None:
        if self.bootstrap < 100:
            raise SDZeroError(f"bootstrap must be at least 100, not {self.bootstrap}")


# --- statistics -------------------------------------------------------------------------------------------

def bootstrap_mean(values: Sequence[float], resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of the mean."""
    if not values:
        raise SDZeroError("no values to bootstrap")
    rng, n = random.Random(seed), len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return sum(values) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def bootstrap_difference(a: Sequence[float], b: Sequence[float], resamples: int,
                         seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) for two independent groups, and its 95% percentile-bootstrap interval."""
    if not a or not b:
        raise SDZeroError("a group to compare is empty")
    rng = random.Random(seed)
    diffs = sorted(sum(a[rng.randrange(len(a))] for _ in a) / len(a) - sum(b[rng.randrange(len(b))] for _ in b)
                   / len(b) for _ in range(resamples))
    return sum(a) / len(a) - sum(b) / len(b), diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples) - 1]


def verdict(lo: float, hi: float) -> str:
    """The interval rule: above zero holds, below zero does not, across zero is inconclusive."""
    return HOLDS if lo > 0 else FAILS if hi < 0 else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """Several parts: holds when all hold, does not hold when any does not, else inconclusive."""
    if any(v == FAILS for v in verdicts):
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else INCONCLUSIVE


# --- reading a compare folder ---------------------------------------------------------------------------

def _eval_file(folder: Path, method: str) -> Path:
    return folder / "sdzero" / f"eval-{method}.json" if method in SDZERO_STAGES else folder / f"eval-{method}.json"


def read_compare(compare_dir: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """{seed: {method: eval report}} for every method evaluated in every seed folder."""
    seeds: dict[int, dict[str, dict[str, Any]]] = {}
    for folder in sorted(compare_dir.glob("seed-*")):
        try:
            seed = int(folder.name.split("-", 1)[1])
        except ValueError:
            continue
        for method in (*SDZERO_STAGES, *BASELINES):
            f = _eval_file(folder, method)
            if f.is_file():
                seeds.setdefault(seed, {})[method] = json.loads(f.read_text())
    if not seeds:
        raise SDZeroError(f"{compare_dir} holds no evaluated seed (seed-N/sdzero/eval-*.json): run `sdzero compare` "
                          "first, or pass its --output_dir as --compare_dir")
    return seeds


def question_means(report: dict[str, Any]) -> dict[str, float]:
    """Per held-out question: the mean reward of its k samples."""
    questions = report.get("questions")
    if not questions:
        raise SDZeroError("an evaluation report without per-question results (an archived compare keeps only "
                          "metrics): findings need the compare's own folder")
    return {q["id"]: sum(q["rewards"]) / len(q["rewards"]) for q in questions}


def per_question(seeds: dict[int, dict[str, Any]], methods: Sequence[str], fn: Any) -> list[float]:
    """fn(mean reward of each method) per (question, seed), over the seeds that evaluated every method."""
    values = []
    for per_method in seeds.values():
        if all(m in per_method for m in methods):
            means = [question_means(per_method[m]) for m in methods]
            shared = set.intersection(*(set(q) for q in means))
            values += [fn(*(q_means[q] for q_means in means)) for q in sorted(shared)]
    return values


def paired(seeds: dict[int, dict[str, Any]], a: str, b: str) -> list[float]:
    """a minus b per (question, seed), over the seeds that evaluated both."""
    return per_question(seeds, (a, b), lambda x, y: x - y)


def per_seed(seeds: dict[int, dict[str, Any]], method: str, metric: str) -> list[float]:
    return [m[method]["metrics"][metric] for m in seeds.values() if method in m and metric in m[method]["metrics"]]


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f} ({len(values)} seeds)"


# --- the findings ---------------------------------------------------------------------------------------

@dataclass
class Finding:
    key: str
    claim: str
    paper: str
    ours: str = "-"
    interval: str = "-"
    verdict: str = NOT_MEASURED
    parts: dict[str, Any] = field(default_factory=dict)


Part = tuple[str, str, str, dict]  # (ours, interval, verdict, numbers for findings.json)
UNMEASURED: Part = ("-", "-", NOT_MEASURED, {})


def _interval_part(label: str, values: list[float], boots: int) -> Part:
    if not values:
        return UNMEASURED
    mean, lo, hi = bootstrap_mean(values, boots)
    v = verdict(lo, hi)
    return f"{label} {mean:+.3f}", f"{lo:+.3f} .. {hi:+.3f}", v, {"mean": mean, "lo": lo, "hi": hi,
                                                                 "pairs": len(values), "verdict": v}


def _diff_part(seeds: dict[int, dict[str, Any]], a: str, b: str, boots: int) -> Part:
    return _interval_part(f"{a} - {b}", paired(seeds, a, b), boots)


def _finish(f: Finding, parts: list[Part], names: list[str]) -> Finding:
    if all(p[2] == NOT_MEASURED for p in parts):
        return f
    f.ours = "; ".join(p[0] for p in parts if p[2] != NOT_MEASURED)
    f.interval = "; ".join(p[1] for p in parts if p[2] != NOT_MEASURED)
    f.verdict = combine([INCONCLUSIVE if p[2] == NOT_MEASURED else p[2] for p in parts])
    f.parts = {name: p[3] for name, p in zip(names, parts) if p[3]}
    return f


def finding_a(seeds: dict[int, dict[str, Any]], boots: int) -> Finding:
    f = Finding("a", "SRT alone gives most of the gain over the base model",
                "Qwen3-4B: base 49.8, SRT 57.6, SD-Zero 60.3 (SRT: 7.8 of 10.5 points)")
    most = per_question(seeds, ("base", "srt", "sdzero"), lambda base, srt, sdz: (srt - base) - (sdz - srt))
    return _finish(f, [_diff_part(seeds, "srt", "base", boots),
                       _interval_part("(srt - base) - (sdzero - srt)", most, boots)],
                   ["srt_minus_base", "srt_gain_minus_phase2_gain"])


def finding_b(seeds: dict[int, dict[str, Any]], boots: int) -> Finding:
    f = Finding("b", "Phase 2 adds accuracy on top of SRT and roughly halves response length",
                "Qwen3-4B: SRT 57.6 -> SD-Zero 60.3; length roughly halved")
    accuracy = _diff_part(seeds, "sdzero", "srt", boots)
    ratios = [m["sdzero"]["metrics"]["mean_response_tokens"] / m["srt"]["metrics"]["mean_response_tokens"]
              for m in seeds.values() if "sdzero" in m and "srt" in m
              and m["srt"]["metrics"].get("mean_response_tokens")]
    length = UNMEASURED
    if ratios:
        v = HOLDS if all(r <= HALVES for r in ratios) else FAILS if all(r > HALVES for r in ratios) else INCONCLUSIVE
        length = (f"length sdzero / srt {_spread(ratios)}", f"per seed {', '.join(f'{r:.2f}' for r in ratios)}", v,
                  {"ratios": ratios, "verdict": v})
    return _finish(f, [accuracy, length], ["sdzero_minus_srt", "length_ratio"])


def finding_c(compare_dir: Path, boots: int) -> Finding:
    f = Finding("c", f"Self-localization: on wrong responses the KL concentrates on a few tokens (share of a "
                f"response's KL on its top {TOP_SHARE:.0%} of tokens, wrong minus correct)",
                "qualitative (heat-maps): concentrated on wrong, flat on correct")
    shares: dict[bool, list[float]] = {True: [], False: []}
    for rows_file in sorted(compare_dir.glob("seed-*/sdzero/distill/selfloc/step-*.jsonl")):
        for line in rows_file.read_text().splitlines():
            row = json.loads(line)
            s = concentration(row.get("kl") or [], TOP_SHARE)
            if not math.isnan(s):
                shares[row["reward"] >= 1.0].append(s)
    if not shares[True] or not shares[False]:
        return f
    mean, lo, hi = bootstrap_difference(shares[False], shares[True], boots)
    part = (f"wrong {sum(shares[False]) / len(shares[False]):.3f} ({len(shares[False])} responses) - correct "
            f"{sum(shares[True]) / len(shares[True]):.3f} ({len(shares[True])}) = {mean:+.3f}",
            f"{lo:+.3f} .. {hi:+.3f}", verdict(lo, hi),
            {"mean": mean, "lo": lo, "hi": hi, "wrong": len(shares[False]), "correct": len(shares[True]),
             "verdict": verdict(lo, hi)})
    return _finish(f, [part], ["top_share_wrong_minus_correct"])


def finding_f(seeds: dict[int, dict[str, Any]], boots: int) -> Finding:
    f = Finding("f", "SD-Zero beats RFT, GRPO and SDFT at the same questions and generation budget",
                "Qwen3-4B: SD-Zero 60.3 vs RFT 54.3, GRPO 53.1, SDFT 51.2")
    present = [m for m in BASELINES if any(m in s for s in seeds.values())]
    parts = [_diff_part(seeds, "sdzero", m, boots) for m in present]
    if len(present) < len(BASELINES):  # a baseline missing: the claim is about all three
        parts.append(UNMEASURED)
    return _finish(f, parts, [f"sdzero_minus_{m}" for m in present] + ["missing"])


def finding_g(seeds: dict[int, dict[str, Any]], boots: int) -> Finding:
    """Correction after "start over": SRT's rate above the base model's and above a fresh sample's, on the
    wrong drafts of the held-out questions (draft-level 0/1 outcomes rebuilt from each seed's counts)."""
    f = Finding("g", "After SRT the generate-then-revise correction rate rises well above the base model's and "
                "above fresh resampling", "base 2.7% -> SRT 15.0% (fresh resampling: not reported)")

    def outcomes(method: str, rate_key: str) -> list[float]:
        out: list[float] = []
        for m in seeds.values():
            metrics = m.get(method, {}).get("metrics", {})
            wrong, rate = metrics.get("wrong_drafts"), metrics.get(rate_key)
            if wrong and rate is not None:
                fixed = round(rate * wrong)
                out += [1.0] * fixed + [0.0] * (wrong - fixed)
        return out

    srt, base, resample = (outcomes("srt", "correction_rate"), outcomes("base", "correction_rate"),
                           outcomes("srt", "resample_accuracy_on_wrong"))
    parts = []
    for name, other in (("base", base), ("fresh resample", resample)):
        if srt and other:
            mean, lo, hi = bootstrap_difference(srt, other, boots)
            parts.append((f"SRT {sum(srt) / len(srt):.3f} - {name} {sum(other) / len(other):.3f} = {mean:+.3f}",
                          f"{lo:+.3f} .. {hi:+.3f}", verdict(lo, hi),
                          {"mean": mean, "lo": lo, "hi": hi, "drafts": [len(srt), len(other)],
                           "verdict": verdict(lo, hi)}))
        else:
            parts.append(UNMEASURED)
    return _finish(f, parts, ["srt_minus_base", "srt_minus_resample"])


NOT_YET = [
    Finding("d", "Iterative self-evolution: syncing the teacher at a plateau adds accuracy over a frozen teacher "
            "run for the same steps", "+3 points after a sync at ~step 400"),
    Finding("e", "Phase 2 without SRT (from the base model) barely helps", "Qwen3-4B: 49.8 -> 51.4"),
    Finding("h", "L_revision + L_generation beats either term alone", "Table 11: 57.6 vs 52.2 and 56.4"),
    Finding("i", "Sample efficiency: SD-Zero reaches each baseline's final accuracy with fewer generations",
            "SD-Zero 49K generations vs 60K for the baselines"),
]


def compute_findings(compare_dir: Path, boots: int) -> list[Finding]:
    seeds = read_compare(compare_dir)
    found = [finding_a(seeds, boots), finding_b(seeds, boots), finding_c(compare_dir, boots),
             finding_f(seeds, boots), finding_g(seeds, boots)]
    return sorted(found + [Finding(f.key, f.claim, f.paper) for f in NOT_YET], key=lambda f: f.key)


def write_findings(cfg: FindingsConfig) -> Path:
    """Compute every finding the compare folder can answer; write findings.md and findings.json."""
    from dataclasses import asdict

    cfg.validate()
    compare_dir = Path(cfg.compare_dir)
    if not compare_dir.is_dir():
        raise SDZeroError(f"compare_dir {compare_dir} is not a folder")
    found = compute_findings(compare_dir, cfg.bootstrap)
    seeds = sorted(read_compare(compare_dir))
    out = Path(cfg.output_dir) if cfg.output_dir else compare_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# The paper's findings on this setting", "",
             f"From `sdzero findings --compare_dir {compare_dir}` over seeds {', '.join(map(str, seeds))}.", "",
             "Verdict rule (fixed before any result was read):", "", RULE, "",
             "| | finding | paper | ours | 95% interval | verdict |", "|---|---|---|---|---|---|"]
    for f in found:
        lines.append(f"| {f.key} | {f.claim} | {f.paper} | {f.ours} | {f.interval} | **{f.verdict}** |")
    atomic_write_text(out / "findings.md", "\n".join(lines) + "\n")
    atomic_write_json(out / "findings.json", {"compare_dir": str(compare_dir), "seeds": seeds, "rule": RULE,
                                              "findings": [asdict(f) for f in found]})
    return out / "findings.md"
