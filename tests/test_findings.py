"""`sdzero findings` on compare folders built in the test, with known answers."""

import json
import random

import pytest

from sdzero.cli import main
from sdzero.errors import SDZeroError
from sdzero.findings import (FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, FindingsConfig, bootstrap_difference,
                             bootstrap_mean, combine, compute_findings, verdict)


def eval_report(accuracy: float, rng: random.Random, n: int = 60, tokens: float = 40.0, wrong: int = 100,
                correction: float = 0.1, resample: float = 0.1) -> dict:
    questions = [{"id": f"q{i}", "rewards": [float(rng.random() < accuracy) for _ in range(2)]} for i in range(n)]
    return {"questions": questions, "metrics": {"mean_response_tokens": tokens, "wrong_drafts": wrong,
                                                "correction_rate": correction, "resample_accuracy_on_wrong": resample}}


def make_compare(root, seeds=(0, 1), methods=None, heatmaps=True, same_draws=False):
    """Seed folders as `sdzero compare` writes them; `same_draws`: every method gets the same random draws
    (equal accuracies then give identical rewards)."""
    rng = random.Random(0)
    methods = methods or {"base": dict(accuracy=0.2, correction=0.02), "srt": dict(accuracy=0.7, correction=0.3),
                          "sdzero": dict(accuracy=0.4, tokens=15.0), "rft": dict(accuracy=0.8),
                          "grpo": dict(accuracy=0.8), "sdft": dict(accuracy=0.8)}
    for seed in seeds:
        folder = root / f"seed-{seed}"
        (folder / "sdzero").mkdir(parents=True)
        for method, kw in methods.items():
            path = folder / "sdzero" / f"eval-{method}.json" if method in ("base", "srt", "sdzero") else \
                folder / f"eval-{method}.json"
            path.write_text(json.dumps(eval_report(rng=random.Random(seed) if same_draws else rng, **kw)))
        if heatmaps:  # wrong responses: KL on one token; correct ones: flat
            selfloc = folder / "sdzero" / "distill" / "selfloc"
            selfloc.mkdir(parents=True)
            rows = [{"reward": 0.0, "kl": [0.01] * 19 + [3.0 + rng.random()]} for _ in range(10)]
            rows += [{"reward": 1.0, "kl": [0.5 + 0.1 * rng.random() for _ in range(20)]} for _ in range(10)]
            (selfloc / "step-000001.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_the_verdict_rule_and_its_statistics():
    assert verdict(0.01, 0.2) == HOLDS and verdict(-0.2, -0.01) == FAILS and verdict(-0.1, 0.1) == INCONCLUSIVE
    assert combine([HOLDS, HOLDS]) == HOLDS and combine([HOLDS, FAILS]) == FAILS
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    d, lo, hi = bootstrap_difference([1.0] * 30 + [0.0] * 10, [1.0] * 10 + [0.0] * 30, 500)
    assert d == pytest.approx(0.5) and 0 < lo < d < hi < 1
    mean, lo, hi = bootstrap_mean([0.0, 1.0] * 50, 500)
    assert lo < mean == 0.5 < hi and bootstrap_mean([0.0, 1.0] * 50, 500) == (mean, lo, hi)  # seeded


def test_findings_on_a_compare_with_known_answers(tmp_path):
    """SRT far above base, SD-Zero between them, every baseline above SD-Zero, KL concentrated on wrong
    responses, correction 0.30 after SRT vs 0.02 for base and 0.10 for a fresh sample."""
    found = {f.key: f for f in compute_findings(make_compare(tmp_path), 500)}
    assert found["a"].verdict == HOLDS  # SRT gives all of the gain and more
    assert found["b"].verdict == FAILS  # SD-Zero below SRT, though the length ratio (0.375) halves
    assert found["b"].parts["length_ratio"]["verdict"] == HOLDS
    assert found["c"].verdict == HOLDS
    assert found["f"].verdict == FAILS and set(found["f"].parts) == {"sdzero_minus_rft", "sdzero_minus_grpo",
                                                                       "sdzero_minus_sdft"}
    assert found["g"].verdict == HOLDS
    assert [found[k].verdict for k in "dehi"] == [NOT_MEASURED] * 4


def test_findings_command_writes_the_rule_and_the_table(tmp_path, capsys):
    compare = make_compare(tmp_path / "compare", heatmaps=False, same_draws=True,
                           methods={"base": dict(accuracy=0.3), "srt": dict(accuracy=0.3),
                                    "sdzero": dict(accuracy=0.3)})
    assert main(["findings", "--compare_dir", str(compare), "--bootstrap", "300"]) == 0
    md = (compare / "report" / "findings.md").read_text()
    assert "Verdict rule (fixed before any result was read)" in md and "| a |" in md and "| i |" in md
    data = json.loads((compare / "report" / "findings.json").read_text())
    found = {f["key"]: f for f in data["findings"]}
    assert found["a"]["verdict"] == INCONCLUSIVE  # identical rewards: every difference is 0
    assert found["c"]["verdict"] == found["f"]["verdict"] == NOT_MEASURED  # no heat-maps, no baselines
    assert data["seeds"] == [0, 1]


def test_findings_refuse_folders_they_cannot_read(tmp_path):
    with pytest.raises(SDZeroError, match="holds no evaluated seed"):
        compute_findings(tmp_path, 100)
    (tmp_path / "seed-0" / "sdzero").mkdir(parents=True)
    (tmp_path / "seed-0" / "sdzero" / "eval-base.json").write_text(json.dumps({"metrics": {"avg@2": 0.2}}))
    (tmp_path / "seed-0" / "sdzero" / "eval-srt.json").write_text(json.dumps({"metrics": {"avg@2": 0.3}}))
    with pytest.raises(SDZeroError, match="archived compare keeps only metrics"):
        compute_findings(tmp_path, 100)
    with pytest.raises(SDZeroError, match="bootstrap must be at least 100"):
        FindingsConfig(bootstrap=5).validate()
