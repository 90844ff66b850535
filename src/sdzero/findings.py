"""`sdzero findings`: the paper's checkable claims as verdicts, read from a `sdzero compare` folder.

For each finding: the paper's number, ours (over the seeds that have it), a 95% interval and a verdict by
RULE below, which findings.md repeats. Its history: written before any result was read; after one partial
run on seed 0 (base, SRT, SD-Zero only) and a review, its wording was made exact and the pairs' bootstrap
became a cluster bootstrap over questions (no threshold or direction moved); the rules for (e) and (i) were
added after that run, before any variant or baseline result existed, and (i)'s "fewer" became "at most" on
a second review (a compare matches the baselines' budget to SD-Zero's spend). When the embedded default's SRT
moved to L_revision alone (issue 13), (h)'s three SRT models were named by their loss terms (both, revision
only, generation only), before any held-out (h) result existed; the rule did not move.

Findings (d) self-evolution, (e) Phase 2 from the base model and (h) each SRT loss term alone need runs
that `sdzero compare` does not make: the command runs them first (VARIANTS, each forked from a compare
seed's run, resumable). (i) sample efficiency uses the points a compare has (each method's final model and
SRT's, after Phase 1): no evaluation in the middle of a baseline's training.

Simplifications, stated here: heat-map rows (c) are the few responses per step the Phase-2 trainer draws
for its heat-maps (8 by default, at its first and last step), pooled over seeds as independent rows.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json, atomic_write_text, read_jsonl
from sdzero.selfloc import concentration

HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"
SDZERO_STAGES = ("base", "srt", "sdzero")  # evaluated inside each seed's `sdzero run` folder
BASELINES = ("rft", "grpo", "sdft")
TOP_SHARE = 0.10  # (c): the share of a response's KL carried by its top 10% of tokens
HALVES = 2 / 3  # (b): "roughly halves" = at most this ratio
RULE = """\
- A difference between two methods is paired: per held-out question and seed, method A's mean reward over
  its k samples minus method B's on the same question and seed. Seeds share their held-out questions, so
  the interval is a cluster bootstrap: seeded resamples of the questions (--bootstrap, 10,000), each with
  all its seeds, 95% percentile interval of the mean difference. Heat-map rows (c) are resampled as
  independent rows per group; correction rates (g) are sums over the resampled questions' drafts.
- **holds**: the interval lies above zero (the claimed side); **does not hold**: it lies below zero;
  **inconclusive**: it crosses zero. A finding with several parts holds when every part holds, does not
  hold when any part does not, and is inconclusive otherwise (a part not measured counts as inconclusive).
- "Roughly halves" is a ratio of at most 2/3 in every seed (does not hold: above 2/3 in every seed).
- (a) "most of the gain": the interval of SRT minus base above zero, and that of (SRT - base) - (SD-Zero -
  SRT) above zero, i.e. SRT's gain at least half of SD-Zero's whole gain over the base model. When Phase 2
  loses accuracy, SRT gives more than all of the gain and (a) holds; (b) says whether Phase 2 helps.
- (e) "barely helps" (SRT is a prerequisite): SD-Zero minus Phase 2 run from the base model above zero.
- (i) for each baseline: holds when a point of SD-Zero's pipeline that spent at most the baseline's
  training generations (SRT after Phase 1, SD-Zero after Phase 2; a compare gives each baseline SD-Zero's
  own spend, so SD-Zero's final point counts at equal spend) is above the baseline's final accuracy, does
  not hold when every such point is below it, else inconclusive; all baselines together as parts."""


@dataclass
class FindingsConfig:
    compare_dir: str = field(default="outputs/compare", metadata={"help": "Output folder of `sdzero compare`."})
    output_dir: str | None = field(default=None, metadata={
        "help": "Where findings.md and findings.json go; default: COMPARE_DIR/report."})
    bootstrap: int = field(default=10_000, metadata={"help": "Bootstrap resamples per interval."})
    variants: str = field(default="all", metadata={
        "help": "The runs some findings need, forked from each compare seed's run (resumable): all, none, or a "
                "comma list of frozen-long, sync-long (d), phase2-from-base (e), srt-both, srt-revision-only, "
                "srt-generation-only (h; the one the compare's SRT already is is not run again)."})
    seeds: str | None = field(default=None, metadata={
        "help": "Comma list of the compare seeds whose variants run (default: all); the file reads every seed."})

    def validate(self) -> None:
        if self.bootstrap < 100:
            raise SDZeroError(f"bootstrap must be at least 100, not {self.bootstrap}")
        self.variant_list()
        self.seed_list()

    def seed_list(self) -> list[int] | None:
        if self.seeds is None:
            return None
        try:
            seeds = [int(s) for s in str(self.seeds).split(",") if s.strip()]
        except ValueError as e:
            raise SDZeroError(f"seeds must be comma-separated integers, not {self.seeds!r}") from e
        if not seeds:
            raise SDZeroError("seeds names no seed; leave it out to run every compare seed's variants")
        return seeds

    def variant_list(self) -> list[str]:
        if self.variants in ("all", "none"):
            return list(VARIANTS) if self.variants == "all" else []
        names = [v.strip() for v in str(self.variants).split(",") if v.strip()]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            raise SDZeroError(f"unknown variants {unknown}; choose from all, none, {', '.join(VARIANTS)}")
        return names


# --- statistics -------------------------------------------------------------------------------------------

Interval = tuple[float, float, float]  # (value, low, high)


def cluster_bootstrap(clusters: Sequence[Sequence[Any]], stat: Callable[[list[Any]], float], resamples: int,
                      seed: int = 0) -> Interval:
    """stat over every item, and its 95% percentile interval when whole clusters (a question with all its
    seeds) are resampled."""
    if not clusters:
        raise SDZeroError("no values to bootstrap")
    rng, n = random.Random(seed), len(clusters)
    values = sorted(stat([x for _ in range(n) for x in clusters[rng.randrange(n)]]) for _ in range(resamples))
    return stat([x for c in clusters for x in c]), values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def bootstrap_mean(values: Sequence[float], resamples: int, seed: int = 0) -> Interval:
    """Mean and 95% percentile-bootstrap interval of independent values."""
    return cluster_bootstrap([[v] for v in values], mean, resamples, seed)


def bootstrap_difference(a: Sequence[float], b: Sequence[float], resamples: int, seed: int = 0) -> Interval:
    """mean(a) - mean(b) for two independent groups, and its 95% percentile-bootstrap interval."""
    if not a or not b:
        raise SDZeroError("a group to compare is empty")
    rng = random.Random(seed)
    diffs = sorted(mean([a[rng.randrange(len(a))] for _ in a]) - mean([b[rng.randrange(len(b))] for _ in b])
                   for _ in range(resamples))
    return mean(a) - mean(b), diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples) - 1]


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


def _seed_folders(compare_dir: Path) -> dict[int, Path]:
    folders = {}
    for folder in compare_dir.glob("seed-*"):
        number = folder.name[len("seed-"):]
        if folder.is_dir() and number.isdigit():
            folders[int(number)] = folder
    return dict(sorted(folders.items()))


def read_compare(compare_dir: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """{seed: {method: eval report}} for every method evaluated in every seed folder, each report's
    per-question results checked: present, one entry per question, the same questions for every method."""
    seeds: dict[int, dict[str, dict[str, Any]]] = {}
    for seed, folder in _seed_folders(compare_dir).items():
        ids_of: dict[str, tuple[Path, set[str]]] = {}
        for method in (*SDZERO_STAGES, *BASELINES):
            f = _eval_file(folder, method)
            if not f.is_file():
                continue
            try:
                report = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise SDZeroError(f"{f}: not valid JSON ({e.msg})") from e
            ids = [q["id"] for q in report.get("questions") or []]
            if not ids:
                raise SDZeroError(f"{f} has no per-question results (an archive made before they were kept has "
                                  "only metrics): archive the compare folder again, or read it there")
            if len(set(ids)) != len(ids):
                raise SDZeroError(f"{f} lists a question twice")
            for other, (g, other_ids) in ids_of.items():
                if other_ids != set(ids):
                    raise SDZeroError(f"{f} and {g} are not on the same questions")
            ids_of[method] = (f, set(ids))
            seeds.setdefault(seed, {})[method] = report
    if not seeds:
        raise SDZeroError(f"{compare_dir} holds no evaluated seed (seed-N/sdzero/eval-*.json): run `sdzero compare` "
                          "first, or pass its --output_dir as --compare_dir")
    return seeds


def question_means(report: dict[str, Any]) -> dict[str, float]:
    """Per held-out question: the mean reward of its k samples."""
    return {q["id"]: mean(q["rewards"]) for q in report["questions"]}


def by_question(seeds: dict[int, dict[str, Any]], methods: Sequence[str],
                fn: Callable[..., Any]) -> tuple[list[list[Any]], list[int]]:
    """fn(each method's per-question entry) per question, clustered by question id over the seeds that
    evaluated every method; and those seeds."""
    clusters: dict[str, list[Any]] = {}
    used = []
    for seed, per_method in seeds.items():
        if all(m in per_method for m in methods):
            used.append(seed)
            entries = [{q["id"]: q for q in per_method[m]["questions"]} for m in methods]
            for qid in sorted(entries[0]):
                clusters.setdefault(qid, []).append(fn(*(e[qid] for e in entries)))
    return list(clusters.values()), used


# --- the runs some findings need -------------------------------------------------------------------------
# Each is a `sdzero run` forked from a compare seed's run: the stages up to KEEP are that run's own (linked,
# not copied), the settings below changed, the later stages run anew in COMPARE_DIR/variants/NAME/seed-N.
LONG_PHASE2 = 3  # (d): Phase 2 this many times the compare's steps, so that a plateau can show


def _frozen_long(settings: dict[str, Any]) -> dict[str, Any]:
    return {"distill_max_steps": LONG_PHASE2 * int(settings["distill_max_steps"]), "distill_teacher": "frozen"}


def _sync_long(settings: dict[str, Any]) -> dict[str, Any]:
    # the teacher becomes the student where the compare's Phase 2 ended, and as often again after
    return {**_frozen_long(settings), "distill_teacher": "sync",
            "distill_teacher_sync_steps": int(settings["distill_max_steps"])}


VARIANTS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    # name: (last stage kept from the compare's run, the changed settings, the last stage run)
    "frozen-long": ("eval-srt", _frozen_long, "eval-sdzero"),
    "sync-long": ("eval-srt", _sync_long, "eval-sdzero"),
    # (h): each set says both terms, so it means the same whatever the compare's SRT trained
    "srt-both": ("collect", lambda s: {"srt_revision_loss": True, "srt_generation_loss": True}, "eval-srt"),
    "srt-revision-only": ("collect", lambda s: {"srt_revision_loss": True, "srt_generation_loss": False}, "eval-srt"),
    "srt-generation-only": ("collect", lambda s: {"srt_revision_loss": False, "srt_generation_loss": True},
                            "eval-srt"),
    "phase2-from-base": ("collect", lambda s: {"srt_skip": True}, "eval-sdzero"),
}


def kept_stages(source: Path, keep_until: str) -> list[str]:
    """The stages a fork of `source` keeps; refused unless `source`'s run has finished (its report)."""
    from sdzero.runfolder import STAGES, read_stages

    missing = [s for s in STAGES if s not in read_stages(source)]
    if missing:
        raise SDZeroError(f"{source} has not finished {', '.join(missing)}: run `sdzero compare` to the end first")
    return STAGES[: STAGES.index(keep_until) + 1]


def forked_from(source: Path, target: Path, keep_until: str) -> bool:
    """Whether fork `target` keeps `source`'s own records of the stages up to `keep_until` (False when the
    compare's run was redone since the fork was made)."""
    from sdzero.runfolder import STAGES, read_stages

    state, forked = read_stages(source), read_stages(target)
    return all(forked.get(s) == state.get(s) for s in STAGES[: STAGES.index(keep_until) + 1])


def check_fork(source: Path, target: Path, keep_until: str) -> None:
    """Refuse a fork whose kept stages' records are not `source`'s own (the compare's run was redone since)."""
    if not forked_from(source, target, keep_until):
        raise SDZeroError(f"{target} was forked from another run of {source} (its kept stages' records "
                          "differ): delete the variant's folder to fork the current run")


def fork_run(source: Path, target: Path, keep_until: str) -> None:
    """A run folder whose stages up to `keep_until` are `source`'s: their outputs linked, their records and
    settings copied (so the pipeline sees only the changed settings as new). Done once; a fork that exists
    is left as it is (its run resumes)."""
    from sdzero.runfolder import STAGE_OUTPUTS, read_stages, write_stages

    state = read_stages(source)
    keep = kept_stages(source, keep_until)
    if (target / "stages.json").exists():  # forked before: only if it still forks this very run
        check_fork(source, target, keep_until)
        return
    target.mkdir(parents=True, exist_ok=True)
    for stage in keep:
        link = target / STAGE_OUTPUTS[stage]
        if not link.is_symlink():  # relative: the compare folder may be moved as a whole
            link.symlink_to(os.path.relpath(source / STAGE_OUTPUTS[stage], target))
    write_stages(target, {"settings": state["settings"], **{s: state[s] for s in keep}})  # last: the fork's mark


def is_compare_run(compare_dir: Path, seed: int, name: str) -> bool:
    """Whether the variant changes nothing in seed `seed`'s run (srt-revision-only when the compare's SRT
    already trains L_revision alone): then the compare's run is the variant, and no fork is made."""
    from sdzero.runfolder import read_stages, recorded_settings

    state = read_stages(compare_dir / f"seed-{seed}" / "sdzero")
    if "settings" not in state:
        return False
    settings = recorded_settings(state)
    return all(settings.get(k) == v for k, v in VARIANTS[name][1](settings).items())


def variant_finished(compare_dir: Path, seed: int, name: str) -> bool:
    """Whether the variant's last stage is recorded (also in an archive, which keeps no models)."""
    from sdzero.runfolder import read_stages

    return VARIANTS[name][2] in read_stages(compare_dir / "variants" / name / f"seed-{seed}")


def missing_outputs(compare_dir: Path, seed: int, name: str) -> list[str]:
    """The outputs of seed `seed`'s run that the variant would fork and that are not there (an archive, or a
    run whose models stayed on another machine)."""
    from sdzero.runfolder import STAGE_OUTPUTS

    source = compare_dir / f"seed-{seed}" / "sdzero"
    return [STAGE_OUTPUTS[s] for s in kept_stages(source, VARIANTS[name][0])
            if not (source / STAGE_OUTPUTS[s]).exists()]


def run_variant(compare_dir: Path, seed: int, name: str) -> Path:
    """Fork seed `seed`'s run and run the variant's stages; returns its folder."""
    from dataclasses import fields, replace

    from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig
    from sdzero.pipeline import RunConfig, run_pipeline
    from sdzero.runfolder import read_stages, recorded_settings

    keep, changes, last = VARIANTS[name]
    source, target = compare_dir / f"seed-{seed}" / "sdzero", compare_dir / "variants" / name / f"seed-{seed}"
    fork_run(source, target, keep)
    settings = recorded_settings(read_stages(source))  # an older run's SRT: both terms, whatever today's default
    settings.update(changes(settings))

    def make(cls: type) -> Any:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})

    cfg = replace(make(RunConfig), output_dir=str(target), stop_after=last)
    run_pipeline(make(ModelConfig), make(TaskConfig), make(GenerationConfig), make(RevisionConfig), cfg)
    return target


def variant_reports(compare_dir: Path, name: str, stage: str) -> dict[int, dict[str, Any]]:
    """{seed: the variant's evaluation report of `stage` (srt or sdzero)} for the seeds that have it."""
    out = {}
    for seed, folder in _seed_folders(compare_dir / "variants" / name).items():
        f = folder / f"eval-{stage}.json"
        if f.is_file():
            out[seed] = json.loads(f.read_text())
    return out


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


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _part(label: str, interval: Interval, unit: Callable[[float], str], extra: dict[str, Any]) -> Part:
    value, lo, hi = interval
    v = verdict(lo, hi)
    return f"{label} {unit(value)}", f"{unit(lo)} .. {unit(hi)}", v, {"value": value, "lo": lo, "hi": hi,
                                                                       "verdict": v, **extra}


def _accuracy_part(seeds: dict[int, dict[str, Any]], label: str, methods: Sequence[str],
                   fn: Callable[..., float], boots: int) -> Part:
    """A per-question difference of mean rewards, in points, with its cluster-bootstrap interval."""
    clusters, used = by_question(seeds, methods, lambda *qs: fn(*(mean(q["rewards"]) for q in qs)))
    if not clusters:
        return UNMEASURED
    part = _part(f"{label} ({len(used)} seed{'s' if len(used) != 1 else ''} x {len(clusters)} questions)",
                 cluster_bootstrap(clusters, mean, boots), _points, {"seeds": used, "questions": len(clusters)})
    return part


def _finish(f: Finding, parts: list[Part], names: list[str]) -> Finding:
    if all(p[2] == NOT_MEASURED for p in parts):
        return f
    f.ours = "; ".join(p[0] for p in parts if p[0] != "-")  # a part not measured may say why
    f.interval = "; ".join(p[1] for p in parts if p[2] != NOT_MEASURED and p[1] != "-")
    f.verdict = combine([INCONCLUSIVE if p[2] == NOT_MEASURED else p[2] for p in parts])
    f.parts = {name: p[3] for name, p in zip(names, parts) if p[3]}
    return f


def finding_a(seeds: dict[int, dict[str, Any]], boots: int) -> Finding:
    f = Finding("a", "SRT alone gives most of the gain over the base model",
                "Qwen3-4B: base 49.8, SRT 57.6, SD-Zero 60.3 (SRT: 7.8 of 10.5 points)")
    gain = _accuracy_part(seeds, "srt - base", ("srt", "base"), lambda srt, base: srt - base, boots)
    most = _accuracy_part(seeds, "(srt - base) - (sdzero - srt)", ("base", "srt", "sdzero"),
                          lambda base, srt, sdz: (srt - base) - (sdz - srt), boots)
    return _finish(f, [gain, most], ["srt_minus_base", "srt_gain_minus_phase2_gain"])


def finding_b(seeds: dict[int, dict[str, Any]], boots: int) -> Finding:
    f = Finding("b", "Phase 2 adds accuracy on top of SRT and roughly halves response length",
                "Qwen3-4B: SRT 57.6 -> SD-Zero 60.3; length roughly halved")
    accuracy = _accuracy_part(seeds, "sdzero - srt", ("sdzero", "srt"), lambda sdz, srt: sdz - srt, boots)
    lengths = [(m["sdzero"]["metrics"].get("mean_response_tokens"), m["srt"]["metrics"].get("mean_response_tokens"))
               for m in seeds.values() if "sdzero" in m and "srt" in m]
    ratios = [a / b for a, b in lengths if a is not None and b]
    length = UNMEASURED
    if ratios:
        v = HOLDS if all(r <= HALVES for r in ratios) else FAILS if all(r > HALVES for r in ratios) else INCONCLUSIVE
        length = (f"length sdzero / srt per seed {', '.join(f'{r:.2f}' for r in ratios)}", "-", v,
                  {"ratios": ratios, "verdict": v})
    return _finish(f, [accuracy, length], ["sdzero_minus_srt", "length_ratio"])


def finding_c(compare_dir: Path, seeds: Sequence[int], boots: int) -> Finding:
    f = Finding("c", f"Self-localization: on wrong responses the KL concentrates on a few tokens (share of a "
                f"response's KL on its top {TOP_SHARE:.0%} of tokens, wrong minus correct)",
                "qualitative (heat-maps): concentrated on wrong, flat on correct")
    folders = _seed_folders(compare_dir)
    shares: dict[bool, list[float]] = {True: [], False: []}
    later: dict[bool, list[float]] = {True: [], False: []}  # without the first token (it follows the phrase)
    for seed in seeds:
        for rows_file in sorted((folders[seed] / "sdzero" / "distill" / "selfloc").glob("step-*.jsonl")):
            for row in read_jsonl(rows_file):
                kl = row.get("kl") or []
                for store, values in ((shares, kl), (later, kl[1:])):
                    s = concentration(values, TOP_SHARE)
                    if not math.isnan(s):
                        store[row["reward"] >= 1.0].append(s)
    if not shares[True] or not shares[False]:
        return f
    part = _part(f"wrong {mean(shares[False]):.3f} ({len(shares[False])} responses) - correct "
                 f"{mean(shares[True]):.3f} ({len(shares[True])}) =",
                 bootstrap_difference(shares[False], shares[True], boots), lambda x: f"{x:+.3f}",
                 {"wrong": len(shares[False]), "correct": len(shares[True]),
                  "shares": {"wrong": shares[False], "correct": shares[True]}})
    if later[True] and later[False]:
        part = (part[0] + f" (without the first token: {mean(later[False]):.3f} - {mean(later[True]):.3f})",
                *part[1:])
    return _finish(f, [part], ["top_share_wrong_minus_correct"])


def finding_f(seeds: dict[int, dict[str, Any]], boots: int) -> Finding:
    f = Finding("f", "SD-Zero beats RFT, GRPO and SDFT at the same questions and generation budget",
                "Qwen3-4B: SD-Zero 60.3 vs RFT 54.3, GRPO 53.1, SDFT 51.2")
    parts, names = [], []
    for m in BASELINES:
        part = _accuracy_part(seeds, f"sdzero - {m}", ("sdzero", m), lambda sdz, other: sdz - other, boots)
        parts.append(part if part[2] != NOT_MEASURED else (f"{m}: not run", "-", NOT_MEASURED, {}))
        names.append(f"sdzero_minus_{m}")
    return _finish(f, parts, names)


def _drafts(q: dict[str, Any]) -> tuple[int, int, int, int, float]:
    """Of one question's wrong drafts, as `sdzero.evaluate.correction_metrics` counts them: how many, how
    many fixed after "start over"; of those with other samples of the question (k > 1), how many, how many
    fixed, and the summed accuracy of those other samples (a fresh sample's chance)."""
    rewards, revisions = q["rewards"], q.get("revision_rewards") or []
    wrong = fixed = paired = paired_fixed = 0
    resample = 0.0
    for i, (d, r) in enumerate(zip(rewards, revisions)):
        if d < 1.0:
            wrong += 1
            fixed += r >= 1.0
            others = rewards[:i] + rewards[i + 1:]
            if others:
                paired += 1
                paired_fixed += r >= 1.0
                resample += mean(others)
    return wrong, fixed, paired, paired_fixed, resample


def finding_g(seeds: dict[int, dict[str, Any]], boots: int) -> Finding:
    """Correction after "start over" on the wrong drafts of the held-out questions: SRT's rate against the
    base model's (the paper's claim) and against a fresh sample of the same question (ours: the premise)."""
    f = Finding("g", "After SRT the generate-then-revise correction rate rises well above the base model's; "
                "and (ours, not the paper's) above a fresh sample's", "base 2.7% -> SRT 15.0%")
    clusters, used = by_question(seeds, ("srt", "base"), lambda srt, base: (_drafts(srt), _drafts(base)))

    def rate(items: list[Any], which: int) -> float:
        wrong = sum(x[which][0] for x in items)
        return sum(x[which][1] for x in items) / wrong if wrong else 0.0

    def above_base(items: list[Any]) -> float:
        return rate(items, 0) - rate(items, 1)

    def above_resample(items: list[Any]) -> float:  # paired: the same wrong drafts of the SRT model
        paired = sum(x[0][2] for x in items)
        return (sum(x[0][3] for x in items) - sum(x[0][4] for x in items)) / paired if paired else 0.0

    items = [x for c in clusters for x in c]
    if not sum(x[0][0] for x in items) or not sum(x[1][0] for x in items):
        return f
    srt_rate = rate(items, 0)
    parts = [_part(f"SRT {srt_rate:.1%} - base {rate(items, 1):.1%} =", cluster_bootstrap(clusters, above_base, boots),
                   _points, {"seeds": used})]
    if sum(x[0][2] for x in items):  # k > 1: wrong drafts with a fresh sample beside them
        paired_rate = sum(x[0][3] for x in items) / sum(x[0][2] for x in items)
        parts.append(_part(f"SRT {paired_rate:.1%} - fresh sample {paired_rate - above_resample(items):.1%} =",
                           cluster_bootstrap(clusters, above_resample, boots), _points, {"seeds": used}))
    else:
        parts.append(("fresh sample: k = 1, none", "-", NOT_MEASURED, {}))
    return _finish(f, parts, ["srt_minus_base", "srt_minus_resample"])


def _with_variants(seeds: dict[int, dict[str, Any]], compare_dir: Path,
                   names: dict[str, tuple[str, str]]) -> dict[int, dict[str, Any]]:
    """The compare's reports plus each variant's, as methods named by `names` ({method: (variant, stage)})."""
    merged = {seed: dict(per_method) for seed, per_method in seeds.items()}
    for method, (variant, stage) in names.items():
        own = {seed for seed in seeds if is_compare_run(compare_dir, seed, variant)}
        for seed in own:  # a variant that is the compare's own run: its evaluation, never a leftover fork's
            if stage in seeds[seed]:
                merged[seed][method] = seeds[seed][stage]
        for seed, report in variant_reports(compare_dir, variant, stage).items():
            if seed not in seeds or seed in own:
                continue  # a seed the compare no longer has, or a fork made when the compare's run was another
            check_fork(compare_dir / f"seed-{seed}" / "sdzero", compare_dir / "variants" / variant / f"seed-{seed}",
                       VARIANTS[variant][0])  # never a variant of another run of the seed
            ids = {q["id"] for q in report.get("questions") or []}
            if ids != {q["id"] for q in next(iter(seeds[seed].values()))["questions"]}:
                raise SDZeroError(f"{variant} seed {seed}'s eval-{stage}.json is not on the compare's questions")
            merged[seed][method] = report
    return merged


def finding_d(seeds: dict[int, dict[str, Any]], compare_dir: Path, boots: int) -> Finding:
    f = Finding("d", f"Iterative self-evolution: a teacher synced to the student adds accuracy over a frozen teacher "
                f"over the same Phase 2 ({LONG_PHASE2}x the compare's steps)", "+3 points after a sync at ~step 400")
    both = _with_variants(seeds, compare_dir, {"sync": ("sync-long", "sdzero"), "frozen": ("frozen-long", "sdzero")})
    part = _accuracy_part(both, "sync - frozen", ("sync", "frozen"), lambda a, b: a - b, boots)
    return _finish(f, [part], ["sync_minus_frozen"])


def finding_e(seeds: dict[int, dict[str, Any]], compare_dir: Path, boots: int) -> Finding:
    f = Finding("e", "Phase 2 without SRT (from the base model) barely helps: SD-Zero beats it",
                "Qwen3-4B: base 49.8 -> Phase 2 alone 51.4, SD-Zero 60.3")
    merged = _with_variants(seeds, compare_dir, {"from-base": ("phase2-from-base", "sdzero")})
    parts = [_accuracy_part(merged, "sdzero - phase 2 from base", ("sdzero", "from-base"), lambda a, b: a - b, boots)]
    gain = _accuracy_part(merged, "phase 2 from base - base", ("from-base", "base"), lambda a, b: a - b, boots)
    f = _finish(f, parts, ["sdzero_minus_phase2_from_base"])
    if gain[2] != NOT_MEASURED:  # reported beside the verdict, not part of it
        f.ours += f"; {gain[0]} ({gain[1]})"
        f.parts["phase2_from_base_minus_base"] = gain[3]
    return f


def finding_h(seeds: dict[int, dict[str, Any]], compare_dir: Path, boots: int) -> Finding:
    f = Finding("h", "L_revision + L_generation beats either term alone (the SRT models)",
                "Table 11: 57.6 vs 52.2 and 56.4")
    # one of the three is usually the compare's own SRT (the embedded default trains L_revision alone)
    merged = _with_variants(seeds, compare_dir, {"both": ("srt-both", "srt"),
                                                 "revision-only": ("srt-revision-only", "srt"),
                                                 "generation-only": ("srt-generation-only", "srt")})
    parts = [_accuracy_part(merged, f"both - {m}", ("both", m), lambda a, b: a - b, boots)
             for m in ("revision-only", "generation-only")]
    return _finish(f, parts, ["both_minus_revision_only", "both_minus_generation_only"])


def generations_spent(compare_dir: Path, seed: int) -> dict[str, int]:
    """Training generations per evaluated method of one compare seed (SRT's are Phase 1's, SD-Zero's Phase 1 +
    2's), as the compare's report counts them."""
    from sdzero.reports import collect_rows

    rows = collect_rows(compare_dir, [seed], list(BASELINES))
    return {m: int(row["seeds"][seed]["train_generations"]) for m, row in rows.items() if m != "base"}


def finding_i(seeds: dict[int, dict[str, Any]], compare_dir: Path, boots: int) -> Finding:
    f = Finding("i", "Sample efficiency: SD-Zero's pipeline reaches each baseline's final accuracy with no more "
                "training generations", "SD-Zero 49K generations (SRT after 40K) vs 60K for each baseline")
    spent = {seed: generations_spent(compare_dir, seed) for seed in seeds}
    parts, names = [], []
    for m in BASELINES:
        points = []
        for point in ("srt", "sdzero"):
            fewer = {seed: per_method for seed, per_method in seeds.items()
                     if point in spent[seed] and m in spent[seed] and spent[seed][point] <= spent[seed][m]}
            part = _accuracy_part(fewer, f"{point} - {m}", (point, m), lambda a, b: a - b, boots)
            if part[2] != NOT_MEASURED:
                points.append((point, part))
        if not points:
            ran = any(m in per_method for per_method in seeds.values())
            parts.append((f"{m}: not run" if not ran else f"{m}: no pipeline point spent at most its generations",
                          "-", NOT_MEASURED, {}))
        else:
            verdicts = [p[2] for _, p in points]
            v = HOLDS if HOLDS in verdicts else FAILS if all(x == FAILS for x in verdicts) else INCONCLUSIVE
            parts.append(("; ".join(p[0] for _, p in points), "; ".join(p[1] for _, p in points), v,
                          {"points": {point: p[3] for point, p in points}, "verdict": v}))
        names.append(f"reaches_{m}")
    f = _finish(f, parts, names)
    if f.verdict != NOT_MEASURED:
        per_seed = "; ".join(f"seed {seed}: " + ", ".join(f"{k} {v}" for k, v in g.items())
                             for seed, g in spent.items())
        f.ours += f" (generations {per_seed})"
        f.parts["generations"] = spent
    return f


def compute_findings(compare_dir: Path, boots: int,
                     seeds: dict[int, dict[str, dict[str, Any]]] | None = None) -> tuple[list[Finding], list[int]]:
    """Every finding (those a compare cannot answer say not measured), and the seeds read."""
    seeds = seeds if seeds is not None else read_compare(compare_dir)
    found = [finding_a(seeds, boots), finding_b(seeds, boots), finding_c(compare_dir, list(seeds), boots),
             finding_d(seeds, compare_dir, boots), finding_e(seeds, compare_dir, boots), finding_f(seeds, boots),
             finding_g(seeds, boots), finding_h(seeds, compare_dir, boots), finding_i(seeds, compare_dir, boots)]
    return sorted(found, key=lambda f: f.key), list(seeds)


def write_plots(compare_dir: Path, found: list[Finding], out: Path,
                seeds: dict[int, dict[str, dict[str, Any]]]) -> list[Path]:
    """Where a picture says it faster: (c) the KL share on the top tokens, wrong vs correct responses; (d)
    Phase-2 reward per step with a synced and a frozen teacher; (i) held-out accuracy against training
    generations per method. Nothing when matplotlib is missing."""
    from sdzero.reports import pyplot, smooth
    from sdzero.runfolder import read_history

    plt = pyplot("findings")
    if plt is None:
        return []
    by_key, paths = {f.key: f for f in found}, []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        paths.append(out / name)

    shares = by_key["c"].parts.get("top_share_wrong_minus_correct", {}).get("shares")
    if shares:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist([shares["wrong"], shares["correct"]], bins=10, range=(0, 1), label=["wrong", "correct"])
        ax.set(xlabel=f"share of a response's KL on its top {TOP_SHARE:.0%} of tokens", ylabel="responses")
        ax.legend()
        save(fig, "findings-c.png")
    logs = {(v, seed): read_history(folder / "distill") for v in ("frozen-long", "sync-long")
            for seed, folder in _seed_folders(compare_dir / "variants" / v).items()}
    if any(logs.values()):
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for (variant, seed), hist in logs.items():
            if hist:
                ax.plot([h["step"] for h in hist], smooth([h["reward"] for h in hist]),
                        color="C1" if variant == "sync-long" else "C0", label=f"{variant}, seed {seed}")
        ax.set(xlabel="Phase-2 step", ylabel="reward on the step's questions (5-step mean)")
        ax.legend(fontsize=7)
        save(fig, "findings-d.png")
    spent = by_key["i"].parts.get("generations")
    if spent:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for i, method in enumerate((*SDZERO_STAGES, *BASELINES)):
            points = [(0 if method == "base" else spent[seed].get(method),
                       mean(list(question_means(r[method]).values()))) for seed, r in seeds.items() if method in r]
            points = [(x, y) for x, y in points if x is not None]
            if points:
                ax.scatter([x for x, _ in points], [y for _, y in points], color=f"C{i}", label=method)
        ax.set(xlabel="training generations", ylabel="held-out avg@k (one point per seed)")
        ax.legend(fontsize=7)
        save(fig, "findings-i.png")
    return paths


def srt_terms_line(compare_dir: Path, seeds: Sequence[int]) -> str:
    """What the compare's SRT trained (the paper: both terms), since (a), (b), (g) and (i) read its SRT model."""
    from sdzero.runfolder import read_stages, recorded_settings

    terms = set()
    for seed in seeds:
        settings = recorded_settings(read_stages(compare_dir / f"seed-{seed}" / "sdzero"))
        terms.add(" + ".join(t for t, on in (("L_revision", settings.get("srt_revision_loss", True)),
                                              ("L_generation", settings.get("srt_generation_loss"))) if on))
    said = " / ".join(sorted(terms))
    paper = "as the paper's" if terms == {"L_revision + L_generation"} else "the paper trains L_revision + L_generation"
    return f"The compare's SRT trained {said} ({paper}); (a), (b), (g) and (i) read that SRT model."


def write_findings(cfg: FindingsConfig) -> Path:
    """Run the variants (resuming), then compute every finding; write findings.md and findings.json."""
    from sdzero.logs import info

    cfg.validate()
    compare_dir = Path(cfg.compare_dir)
    if not compare_dir.is_dir():
        raise SDZeroError(f"compare_dir {compare_dir} is not a folder")
    reports = read_compare(compare_dir)  # a folder findings cannot read fails before any run; variants leave it as is
    chosen = cfg.seed_list()
    unknown = sorted(set(chosen or []) - set(reports))
    if unknown:
        raise SDZeroError(f"seeds {unknown} are not evaluated in {compare_dir} (it has {sorted(reports)})")
    todo, lacking = [], []
    for name in cfg.variant_list():  # a seed whose run is not finished, or whose models are gone, fails here
        for seed in chosen if chosen is not None else list(reports):
            if is_compare_run(compare_dir, seed, name):
                leftover = compare_dir / "variants" / name / f"seed-{seed}"
                info(f"[findings] seed {seed}: {name} is the compare's own run (no fork)"
                     + (f"; {leftover}, a fork made when it was not, is not read" if leftover.exists() else ""))
            elif variant_finished(compare_dir, seed, name):
                check_fork(compare_dir / f"seed-{seed}" / "sdzero", compare_dir / "variants" / name / f"seed-{seed}",
                           VARIANTS[name][0])
                info(f"[findings] seed {seed}: {name} finished before, read")
            else:
                missing = missing_outputs(compare_dir, seed, name)
                if missing:
                    lacking.append(f"seed {seed} {name} (its run has no {', '.join(missing)})")
                todo.append((seed, name))
    if lacking:
        raise SDZeroError("these variants fork outputs that are not in the compare folder (an archive keeps no "
                          "models): " + "; ".join(lacking) + ". Run them where the seed's `sdzero run` is (a "
                          "session that reran it), choose others with --seeds / --variants, or pass --variants "
                          "none to write the file from what is there")
    for seed, name in todo:
        info(f"[findings] seed {seed}: {name}")
        run_variant(compare_dir, seed, name)
    found, seeds = compute_findings(compare_dir, cfg.bootstrap, reports)
    out = Path(cfg.output_dir) if cfg.output_dir else compare_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# The paper's findings on this setting", "",
             f"From `sdzero findings --compare_dir {compare_dir} --bootstrap {cfg.bootstrap}`; seeds read: "
             f"{', '.join(map(str, seeds))} (each row says which it used). Accuracy differences in points of avg@k "
             "on the held-out questions.", "",
             srt_terms_line(compare_dir, seeds), "",
             "Verdict rule (fixed before the results below were read; its history: `sdzero/findings.py`):", "",
             RULE, "",
             "| | finding | paper | ours | 95% interval | verdict |", "|---|---|---|---|---|---|"]
    for f in found:
        lines.append(f"| {f.key} | {f.claim} | {f.paper} | {f.ours} | {f.interval} | **{f.verdict}** |")
    try:
        plots = write_plots(compare_dir, found, out, reports)
    except Exception as e:  # hours of runs are not lost to a picture
        info(f"[findings] no plots: {type(e).__name__}: {e}")
        plots = []
    lines += ["", *(f"![{p.stem}]({p.name})" for p in plots)]
    atomic_write_text(out / "findings.md", "\n".join(lines) + "\n")
    atomic_write_json(out / "findings.json", {"compare_dir": str(compare_dir), "seeds": seeds, "rule": RULE,
                                              "findings": [asdict(f) for f in found]})
    return out / "findings.md"
