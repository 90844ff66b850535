"""`sdzero findings` on compare folders built in the test, with known answers."""

import json
import os
import random

import pytest
import torch

from sdzero.cli import main
from sdzero.errors import SDZeroError
from sdzero.findings import (FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, FindingsConfig, _with_variants,
                             bootstrap_difference, bootstrap_mean, cluster_bootstrap, combine, compute_findings,
                             is_compare_run, mean, srt_terms_line, verdict)


def eval_report(accuracy: float, rng: random.Random, n: int = 60, tokens: float = 40.0, fix: float = 0.1,
                k: int = 2) -> dict:
    """k samples per question; a wrong draft is fixed after "start over" with probability `fix`."""
    questions = []
    for i in range(n):
        rewards = [float(rng.random() < accuracy) for _ in range(k)]
        revisions = [r if r else float(rng.random() < fix) for r in rewards]
        questions.append({"id": f"q{i}", "rewards": rewards, "revision_rewards": revisions})
    return {"questions": questions, "metrics": {"mean_response_tokens": tokens}}


def make_compare(root, seeds=(0, 1), methods=None, heatmaps=True, same_draws=False, spent=None):
    """Seed folders as `sdzero compare` writes them; `same_draws`: every method and seed gets the same
    random draws (equal accuracies then give identical rewards); `spent`: training generations of Phase 1
    ("collect"), Phase 2 ("distill") and each baseline."""
    spent = spent or {"collect": 100, "distill": 30, "rft": 130, "grpo": 130, "sdft": 130}
    rng = random.Random(0)
    methods = methods or {"base": dict(accuracy=0.2, fix=0.02), "srt": dict(accuracy=0.7, fix=0.6),
                          "sdzero": dict(accuracy=0.4, tokens=15.0), "rft": dict(accuracy=0.8),
                          "grpo": dict(accuracy=0.8), "sdft": dict(accuracy=0.8)}
    for seed in seeds:
        folder = root / f"seed-{seed}"
        (folder / "sdzero").mkdir(parents=True)
        for method, kw in methods.items():
            path = folder / "sdzero" / f"eval-{method}.json" if method in ("base", "srt", "sdzero") else \
                folder / f"eval-{method}.json"
            path.write_text(json.dumps(eval_report(rng=random.Random(0) if same_draws else rng, **kw)))
        (folder / "sdzero" / "stages.json").write_text(json.dumps(
            {s: {"generations": spent[s], "seconds": 1.0} for s in ("collect", "distill")}))
        (folder / "baselines.json").write_text(json.dumps(
            {m: {"generations": spent[m], "sampled_tokens": 0, "train_seconds": 1.0}  # as a compare records them
             for m in ("rft", "grpo", "sdft") if m in methods}))
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
    m, lo, hi = bootstrap_mean([0.0, 1.0] * 50, 500)
    assert lo < m == 0.5 < hi and bootstrap_mean([0.0, 1.0] * 50, 500) == (m, lo, hi)  # seeded


def test_seeds_that_repeat_their_questions_add_no_certainty():
    """Seeds share the held-out questions: three seeds with the very same per-question values must give the
    one-seed interval (a bootstrap over (question, seed) pairs would narrow it by ~sqrt(3))."""
    rng = random.Random(1)
    values = [rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0]) + 0.1 for _ in range(100)]
    one = cluster_bootstrap([[v] for v in values], mean, 2000)
    three = cluster_bootstrap([[v, v, v] for v in values], mean, 2000)
    assert three == pytest.approx(one)
    pooled = bootstrap_mean(values * 3, 2000)
    assert pooled[2] - pooled[1] < 0.75 * (one[2] - one[1])


def test_findings_on_a_compare_with_known_answers(tmp_path):
    """SRT far above base, SD-Zero between them, every baseline above SD-Zero, KL concentrated on wrong
    responses, 60% of SRT's wrong drafts fixed vs 2% of the base model's and ~70% fresh-sample accuracy."""
    found, seeds = compute_findings(make_compare(tmp_path), 500)
    found = {f.key: f for f in found}
    assert seeds == [0, 1]
    assert found["a"].verdict == HOLDS  # SRT gives all of the gain and more
    assert found["b"].verdict == FAILS  # SD-Zero below SRT, though the length ratio (0.375) halves
    assert found["b"].parts["length_ratio"]["verdict"] == HOLDS
    assert found["c"].verdict == HOLDS
    assert found["f"].verdict == FAILS and set(found["f"].parts) == {"sdzero_minus_rft", "sdzero_minus_grpo",
                                                                       "sdzero_minus_sdft"}
    assert found["g"].parts["srt_minus_base"]["verdict"] == HOLDS
    assert found["g"].parts["srt_minus_resample"]["verdict"] == INCONCLUSIVE  # 0.6 vs a fresh sample's ~0.7
    assert found["i"].verdict == FAILS  # every baseline (0.8) above SRT (0.7) and SD-Zero (0.4)
    assert [found[k].verdict for k in "deh"] == [NOT_MEASURED] * 3


def test_one_sample_per_question_has_no_fresh_sample_to_beat(tmp_path):
    """With k = 1 a wrong draft has no other sample: (g)'s second part is not measured (not a 0% rate)."""
    methods = {"base": dict(accuracy=0.2, fix=0.02, k=1), "srt": dict(accuracy=0.5, fix=0.6, k=1)}
    found, _ = compute_findings(make_compare(tmp_path, methods=methods, heatmaps=False), 500)
    g = {f.key: f for f in found}["g"]
    assert g.parts["srt_minus_base"]["verdict"] == HOLDS and "srt_minus_resample" not in g.parts
    assert g.verdict == INCONCLUSIVE and "k = 1" in g.ours


def test_findings_draw_the_pictures_that_say_it_faster(tmp_path):
    from sdzero.findings import write_findings

    compare = make_compare(tmp_path)
    md = write_findings(FindingsConfig(compare_dir=str(compare), variants="none", bootstrap=200)).read_text()
    for name in ("findings-c.png", "findings-i.png"):  # (d)'s needs the variants' Phase-2 logs
        assert (compare / "report" / name).stat().st_size > 1000 and f"({name})" in md
    assert not (compare / "report" / "findings-d.png").exists()


def test_sample_efficiency_counts_only_points_that_spent_fewer_generations(tmp_path):
    """SRT (after 100 generations) beats RFT's and GRPO's final accuracy; SD-Zero spent 130: fewer than RFT's
    150, not fewer than GRPO's 120, so against GRPO only the SRT point counts; SDFT beats both points."""
    methods = {"base": dict(accuracy=0.2), "srt": dict(accuracy=0.8), "sdzero": dict(accuracy=0.8),
               "rft": dict(accuracy=0.3), "grpo": dict(accuracy=0.3), "sdft": dict(accuracy=0.95)}
    spent = {"collect": 100, "distill": 30, "rft": 150, "grpo": 120, "sdft": 500}
    found, _ = compute_findings(make_compare(tmp_path, methods=methods, heatmaps=False, spent=spent), 500)
    i = {f.key: f for f in found}["i"]
    assert i.parts["reaches_rft"]["verdict"] == HOLDS and i.parts["reaches_grpo"]["verdict"] == HOLDS
    assert set(i.parts["reaches_rft"]["points"]) == {"srt", "sdzero"}
    assert set(i.parts["reaches_grpo"]["points"]) == {"srt"}
    assert i.parts["reaches_sdft"]["verdict"] == FAILS and i.verdict == FAILS


def test_srt_with_under_half_of_the_gain_does_not_give_most_of_it(tmp_path):
    """base 0.2 -> SRT 0.3 -> SD-Zero 0.8: SRT's 10 points are a fifth of the gain, so (a) does not hold;
    only RFT ran, so (f) cannot hold."""
    methods = {"base": dict(accuracy=0.2), "srt": dict(accuracy=0.3), "sdzero": dict(accuracy=0.8),
               "rft": dict(accuracy=0.4)}
    found, _ = compute_findings(make_compare(tmp_path, seeds=(0, 1, 2), methods=methods, heatmaps=False), 500)
    found = {f.key: f for f in found}
    assert found["a"].verdict == FAILS and found["a"].parts["srt_gain_minus_phase2_gain"]["verdict"] == FAILS
    assert found["b"].verdict == FAILS  # more accurate, but longer is not halved (ratio 1.0)
    assert found["f"].parts["sdzero_minus_rft"]["verdict"] == HOLDS
    assert found["f"].verdict == INCONCLUSIVE and "grpo: not run" in found["f"].ours  # two baselines missing


def test_findings_command_writes_the_rule_and_the_table(tmp_path, capsys):
    compare = make_compare(tmp_path / "compare", heatmaps=False, same_draws=True,
                           methods={"base": dict(accuracy=0.3), "srt": dict(accuracy=0.3),
                                    "sdzero": dict(accuracy=0.3)})
    assert main(["findings", "--compare_dir", str(compare), "--bootstrap", "300", "--variants", "none"]) == 0
    md = (compare / "report" / "findings.md").read_text()
    assert "Verdict rule" in md and "cluster bootstrap" in md and "| a |" in md and "| i |" in md
    assert "--bootstrap 300`" in md  # the resamples the intervals used, not the rule's default
    data = json.loads((compare / "report" / "findings.json").read_text())
    found = {f["key"]: f for f in data["findings"]}
    assert found["a"]["verdict"] == INCONCLUSIVE  # identical rewards: every difference is 0
    assert found["c"]["verdict"] == NOT_MEASURED  # no heat-maps
    assert data["seeds"] == [0, 1]
    # The variants fork each seed's finished run: a compare without one is refused before any work.
    assert main(["findings", "--compare_dir", str(compare)]) == 2
    assert "has not finished eval-base" in capsys.readouterr().err


def test_findings_refuse_folders_they_cannot_read(tmp_path):
    with pytest.raises(SDZeroError, match="holds no evaluated seed"):
        compute_findings(tmp_path, 100)
    run = tmp_path / "seed-0" / "sdzero"
    run.mkdir(parents=True)
    (run / "eval-base.json").write_text(json.dumps({"metrics": {"avg@2": 0.2}}))
    with pytest.raises(SDZeroError, match="eval-base.json has no per-question results"):
        compute_findings(tmp_path, 100)
    (run / "eval-base.json").write_text(json.dumps(eval_report(0.3, random.Random(0))))
    (run / "eval-srt.json").write_text(json.dumps(eval_report(0.3, random.Random(0), n=50)))
    with pytest.raises(SDZeroError, match="not on the same questions"):
        compute_findings(tmp_path, 100)
    with pytest.raises(SDZeroError, match="bootstrap must be at least 100"):
        FindingsConfig(bootstrap=5).validate()


def test_a_variant_that_is_the_compare_run_is_read_from_it_and_never_from_a_leftover_fork(tmp_path):
    run = tmp_path / "seed-0" / "sdzero"
    run.mkdir(parents=True)
    assert not is_compare_run(tmp_path, 0, "srt-both")  # no record yet: not known to be anything
    # A record from before stage settings were stored: its SRT trained both terms (the default then).
    (run / "stages.json").write_text(json.dumps({"settings": {"srt_revision_loss": True}}))
    assert is_compare_run(tmp_path, 0, "srt-both") and not is_compare_run(tmp_path, 0, "srt-revision-only")
    assert "SRT trained L_revision + L_generation (as the paper's)" in srt_terms_line(tmp_path, [0])
    own = eval_report(0.5, random.Random(1))
    leftover = tmp_path / "variants" / "srt-both" / "seed-0"
    leftover.mkdir(parents=True)  # forked when the compare's run was another one
    (leftover / "eval-srt.json").write_text(json.dumps(eval_report(0.9, random.Random(2))))
    assert _with_variants({0: {"srt": own}}, tmp_path, {"both": ("srt-both", "srt")})[0]["both"] is own
    (run / "stages.json").write_text(json.dumps({"settings": {"srt_revision_loss": True,
                                                              "srt_generation_loss": False}}))
    assert is_compare_run(tmp_path, 0, "srt-revision-only") and not is_compare_run(tmp_path, 0, "srt-both")
    assert "SRT trained L_revision (the paper trains L_revision + L_generation)" in srt_terms_line(tmp_path, [0])
    assert _with_variants({0: {"srt": own}}, tmp_path, {"both": ("srt-both", "srt")})[0]["both"]["questions"] != \
        own["questions"]  # now the fork is the variant


def test_findings_runs_its_variants_forked_from_the_compare_run(tiny_model_dir, tmp_path, capsys):
    """A compare seed's run (a tiny `sdzero run`) forked into the variants (d) and (h) need: the kept stages
    are the compare's own (linked, never rewritten), the changed ones run anew, and the rows get verdicts.
    Started again, nothing is redone."""
    from test_pipeline import ARGS

    compare = tmp_path / "compare"
    run = compare / "seed-0" / "sdzero"
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(run), *ARGS]) == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    argv = ["findings", "--compare_dir", str(compare), "--bootstrap", "200"]  # every variant
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # the compare's run untouched
    variants = compare / "variants"
    frozen, sync, both = (variants / v / "seed-0" for v in ("frozen-long", "sync-long", "srt-both"))
    assert (frozen / "srt").is_symlink() and (frozen / "srt").resolve() == (run / "srt").resolve()
    assert not os.path.isabs(os.readlink(frozen / "srt"))  # relative: the compare folder can move as a whole
    assert (both / "phase1").is_symlink() and not (both / "srt").is_symlink()
    assert json.loads((both / "stages.json").read_text())["settings"]["srt_generation_loss"] is True
    # the compare's SRT trains L_revision alone (the default): it is srt-revision-only, which is not run again
    assert not (variants / "srt-revision-only").exists()
    generation = json.loads((variants / "srt-generation-only" / "seed-0" / "stages.json").read_text())["settings"]
    assert (generation["srt_revision_loss"], generation["srt_generation_loss"]) == (False, True)
    steps = [json.loads(line)["step"] for line in (sync / "distill" / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 3 * 2  # 3x the compare's 2 Phase-2 steps
    stages = json.loads((sync / "stages.json").read_text())
    assert stages["settings"]["distill_teacher"] == "sync" and "eval-sdzero" in stages and "report" not in stages
    assert (both / "eval-srt.json").is_file() and not (both / "distill").exists()
    # Phase 2 from the base model: the "SRT model" is the base model's weights, unchanged (--srt_skip).
    from transformers import AutoModelForCausalLM

    from_base = variants / "phase2-from-base" / "seed-0"
    skipped = AutoModelForCausalLM.from_pretrained(from_base / "srt" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert all(torch.equal(a, b.to(a.dtype)) for a, b in zip(skipped.state_dict().values(), base.state_dict().values()))
    assert json.loads((from_base / "srt" / "model" / "sdzero.json").read_text())["skipped"] is True
    assert (from_base / "eval-sdzero.json").is_file()
    data = json.loads((compare / "report" / "findings.json").read_text())
    found = {f["key"]: f for f in data["findings"]}
    assert found["d"]["verdict"] != NOT_MEASURED and "sync_minus_frozen" in found["d"]["parts"]
    assert (compare / "report" / "findings-d.png").is_file()  # Phase-2 reward per step, synced vs frozen
    assert set(found["h"]["parts"]) == {"both_minus_revision_only", "both_minus_generation_only"}
    assert found["h"]["verdict"] != NOT_MEASURED
    assert "The compare's SRT trained L_revision (the paper trains" in (compare / "report" / "findings.md").read_text()
    assert "sdzero_minus_phase2_from_base" in found["e"]["parts"] and found["e"]["verdict"] != NOT_MEASURED
    made = {p: p.stat().st_mtime_ns for p in variants.rglob("*") if p.is_file() and p.suffix != ".log"}
    records = {p: p.read_text() for p in variants.glob("*/seed-0/stages.json")}
    assert len(records) == 5
    assert main(argv) == 0  # started again: every variant's stages are done, nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in variants.rglob("*") if p.is_file() and p.suffix != ".log"} == made
    assert {p: p.read_text() for p in variants.glob("*/seed-0/stages.json")} == records
    # The compare's run redone (here: its records changed) no longer matches the forks: refused, not mixed.
    state = json.loads((run / "stages.json").read_text())
    state["collect"]["seconds"] += 1.0
    (run / "stages.json").write_text(json.dumps(state))
    assert main(argv) == 2
    assert "was forked from another run" in capsys.readouterr().err
    assert main([*argv, "--variants", "none"]) == 2  # reading alone would mix them too
    assert "was forked from another run" in capsys.readouterr().err
    with pytest.raises(SDZeroError, match="unknown variants"):
        FindingsConfig(variants="frozen-long,bogus").validate()


def test_an_archive_resumes_findings_in_another_session(tiny_model_dir, tmp_path, capsys):
    """Models stay on the machine that made them; the archive (no models, no text) carries a compare seed
    and its finished variants to a later session: the findings it gives are the compare folder's, its
    finished variants are read, not rerun, and one that would fork a model the archive lacks is refused
    before any work, naming it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from test_pipeline import ARGS

    compare = tmp_path / "compare"
    run = compare / "seed-0" / "sdzero"
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(run), *ARGS]) == 0
    variants = "frozen-long,srt-both"
    assert main(["findings", "--compare_dir", str(compare), "--bootstrap", "200", "--variants", variants]) == 0
    unfinished = compare / "variants" / "sync-long" / "seed-0"  # as a session that ended mid-variant leaves it
    shutil.copytree(compare / "variants" / "frozen-long" / "seed-0", unfinished, symlinks=True)
    state = json.loads((unfinished / "stages.json").read_text())
    (unfinished / "stages.json").write_text(json.dumps({k: v for k, v in state.items() if k != "eval-sdzero"}))
    archive = tmp_path / "archive"
    script = Path(__file__).resolve().parents[1] / "scripts" / "archive_compare.py"
    printed = subprocess.run([sys.executable, str(script), str(compare), str(archive)], check=True,
                             capture_output=True, text=True).stdout
    assert "variants frozen-long, srt-both" in printed and "not finished, not archived: sync-long" in printed
    assert not (archive / "variants" / "sync-long").exists()  # its model is not archived: a later session redoes it
    shutil.rmtree(unfinished.parent)
    assert not list(archive.rglob("*.safetensors")) and not list(archive.rglob("model"))
    for report in archive.rglob("eval-*.json"):  # per question: its id and rewards, as the original has them
        original = json.loads((compare / report.relative_to(archive)).read_text())
        numbers = ("id", "rewards", "greedy_reward", "revision_rewards")
        assert "revision_rewards" in original["questions"][0] or "variants" in report.parts
        assert json.loads(report.read_text())["questions"] == [{k: q[k] for k in numbers if k in q}
                                                                for q in original["questions"]]
    rows = sorted((archive / "seed-0" / "sdzero" / "distill" / "selfloc").glob("step-*.jsonl"))  # (c)'s
    assert rows and all(r.read_text() == (compare / r.relative_to(archive)).read_text() for r in rows)
    assert (archive / "variants" / "frozen-long" / "seed-0" / "distill" / "log.jsonl").is_file()  # (d)'s plot
    restored = tmp_path / "next-session"
    shutil.copytree(archive, restored)
    capsys.readouterr()
    assert main(["findings", "--compare_dir", str(restored), "--bootstrap", "200", "--variants", variants]) == 0
    assert capsys.readouterr().out.count("finished before, read") == 2
    assert not list(restored.rglob("model")) and not list(restored.rglob("*.safetensors"))  # nothing ran

    def verdicts(folder: Path) -> dict:
        return {f["key"]: (f["ours"], f["interval"], f["verdict"])
                for f in json.loads((folder / "report" / "findings.json").read_text())["findings"]}

    assert verdicts(restored) == verdicts(compare)
    assert verdicts(restored)["d"][2] == NOT_MEASURED  # sync-long was not run: (d) needs both
    # sync-long would fork the SRT model, which stayed with the compare folder: refused, nothing started
    assert main(["findings", "--compare_dir", str(restored), "--bootstrap", "200", "--variants", "sync-long"]) == 2
    err = capsys.readouterr().err
    assert "seed 0 sync-long (its run has no srt)" in err and "--variants none" in err
    assert not (restored / "variants" / "sync-long").exists()
    # the Phase-1 tuples are archived: a variant that retrains SRT from them runs in the later session
    assert main(["findings", "--compare_dir", str(restored), "--bootstrap", "200", "--variants",
                 "srt-generation-only"]) == 0
    assert (restored / "variants" / "srt-generation-only" / "seed-0" / "srt" / "model").is_dir()
    assert "both - generation-only" in verdicts(restored)["h"][0]
    assert main(["findings", "--compare_dir", str(restored), "--variants", "none", "--seeds", "3"]) == 2
    assert "seeds [3] are not evaluated" in capsys.readouterr().err
    with pytest.raises(SDZeroError, match="names no seed"):
        FindingsConfig(seeds=",").validate()
    # the seed redone (in a session that did not restore the archive) and archived again: its earlier
    # variants no longer pair with it and leave the archive
    state = json.loads((run / "stages.json").read_text())
    (run / "stages.json").write_text(json.dumps({**state, "srt": {**state["srt"], "seconds": -1.0}}))
    shutil.rmtree(compare / "variants")
    printed = subprocess.run([sys.executable, str(script), str(compare), str(archive)], check=True,
                             capture_output=True, text=True).stdout
    assert "removed from the archive: frozen-long" in printed and not (archive / "variants" / "frozen-long").exists()
    assert (archive / "variants" / "srt-both" / "seed-0").is_dir()  # it keeps collect only, which is unchanged
