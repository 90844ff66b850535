"""Baselines (RFT, GRPO, SDFT), the generation budget they share, and `sdzero compare`, on a tiny model."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import parity_task  # noqa: F401  (registers the parity: task)
import pytest
import torch

from sdzero.budget import GenerationBudget
from sdzero.reports import write_compare_report
from sdzero.errors import SDZeroError
from sdzero.generation import Completion, SamplingParams

ROOT = Path(__file__).resolve().parent.parent
SAMPLING = SamplingParams(max_new_tokens=8, temperature=1.0)


@pytest.fixture
def parity():
    from parity_task import ParityTask

    return ParityTask()


def test_budget_counts_and_refuses_to_be_overspent():
    b = GenerationBudget(10)
    assert b.take(4) == 4
    b.spend([Completion([1, 2, 3], "abc", "stop"), [5, 6]], "x")  # completions or bare id lists
    assert (b.generations, b.sampled_tokens, b.remaining) == (2, 5, 8)
    assert b.take(20) == 8
    b.charge(8, 40)
    assert b.remaining == 0 and b.take(3) == 0
    with pytest.raises(SDZeroError, match="past its budget"):
        b.charge(1, 1)
    assert GenerationBudget().take(10**6) == 10**6  # no limit: only counted
    with pytest.raises(SDZeroError):
        GenerationBudget(0)


def test_rft_keeps_only_verified_distinct_samples():
    from sdzero.baselines.rft import select_correct
    from sdzero.tasks.base import Question

    qs = [Question("a", "q a", "1"), Question("b", "q b", "2")]
    c = lambda ids, how="stop": Completion(ids, "t", how)  # noqa: E731
    completions = [[c([1]), c([1]), c([2]), c([3], "length")], [c([4]), c([5]), c([6]), c([7])]]
    rewards = [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    kept = select_correct(qs, completions, rewards)
    assert [(k["question_id"], k["response_ids"]) for k in kept] == [("a", [1])]  # duplicate and cut one dropped
    kept = select_correct(qs, completions, rewards, drop_truncated=False)
    assert [k["response_ids"] for k in kept] == [[1], [3]]


def test_each_method_stops_at_the_same_generation_count(tiny_model_dir, tmp_path, parity):
    """RFT, GRPO and SDFT given one budget each spend exactly that many generations, counted one way."""
    from sdzero.baselines.grpo import GRPOBaselineConfig, run_grpo
    from sdzero.baselines.rft import RFTConfig, run_rft
    from sdzero.baselines.sdft import SDFTConfig, run_sdft
    from sdzero.runfolder import history_totals

    questions = parity.split({"train": 12})["train"]
    spent = {}
    budget = GenerationBudget(16)
    summary = run_rft(str(tiny_model_dir), parity, questions, RFTConfig(output_dir=str(tmp_path / "rft"),
                      drop_truncated=False, num_train_epochs=1), SAMPLING, budget, dtype="fp32")
    spent["rft"] = budget.generations
    kept = [json.loads(x) for x in (tmp_path / "rft" / "samples.jsonl").read_text().splitlines()]
    by_id = {q.id: q for q in questions}
    assert kept and len(kept) == summary["kept"]
    assert all(parity.reward(by_id[k["question_id"]], k["response"]) == 1.0 for k in kept)  # only verified ones
    assert (tmp_path / "rft" / "model" / "config.json").is_file()

    budget = GenerationBudget(16)
    cfg = GRPOBaselineConfig(output_dir=str(tmp_path / "grpo"), questions_per_step=2, num_generations=4,
                             micro_batch_size=4, precision="fp32")
    summary = run_grpo(str(tiny_model_dir), parity, questions, cfg, SAMPLING, budget)
    spent["grpo"] = budget.generations
    assert summary["steps"] == 2 and len(summary["history"]) == 2
    assert (tmp_path / "grpo" / "model" / "config.json").is_file()

    budget = GenerationBudget(16)
    scfg = SDFTConfig(output_dir=str(tmp_path / "sdft"), max_steps=16 // 4, questions_per_step=4, warmup_steps=0,
                      precision="fp32", selfloc_samples=0)
    summary = run_sdft(str(tiny_model_dir), parity, questions, scfg, SAMPLING)
    totals = history_totals(summary["history"])  # what the trainer recorded sampling, step by step
    assert totals["sampled_tokens"] > 0
    budget.charge(totals["responses"], totals["sampled_tokens"], "sdft")
    spent["sdft"] = budget.generations
    assert spent == {"rft": 16, "grpo": 16, "sdft": 16}
    with pytest.raises(SDZeroError, match="less than one GRPO step"):
        cfg.steps_for(7)


def test_grpo_killed_and_resumed_spends_and_learns_like_an_uninterrupted_run(tiny_model_dir, tmp_path, parity):
    """GRPO checkpoints with its budget record; a run stopped after 1 of 3 steps and started again charges the
    first step's rollouts, samples only the rest, and ends with the uninterrupted run's log and weights."""
    from safetensors.torch import load_file

    from sdzero.baselines.grpo import GRPOBaselineConfig, run_grpo

    questions = parity.split({"train": 12})["train"]

    def run(out, **kw):
        budget = GenerationBudget(24)
        cfg = GRPOBaselineConfig(output_dir=str(out), questions_per_step=2, num_generations=4, micro_batch_size=4,
                                 precision="fp32", save_steps=1, learning_rate=1e-3, warmup_steps=0,
                                 mask_truncated_completions=False, **kw)  # a random model never ends
        return run_grpo(str(tiny_model_dir), parity, questions, cfg, SAMPLING, budget), budget

    straight, b1 = run(tmp_path / "straight")
    first, b2 = run(tmp_path / "resumed", stop_after_steps=1)
    assert b2.generations == 8 and not (tmp_path / "resumed" / "model").exists()
    resumed, b3 = run(tmp_path / "resumed")
    assert b1.generations == b3.generations == 24 and b1.sampled_tokens == b3.sampled_tokens
    assert resumed["generations"] == 24  # the summary counts the steps before the checkpoint too
    assert [h["reward"] for h in straight["history"]] == [h["reward"] for h in resumed["history"]]
    assert [h["loss"] for h in straight["history"]] == pytest.approx([h["loss"] for h in resumed["history"]],
                                                                     rel=1e-5, abs=1e-8)
    wa = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.allclose(wa[k], base[k]) for k in wa)  # it trained


def test_zero_variance_groups_have_zero_advantage_and_leave_the_loss(tiny_model_dir, tmp_path, parity):
    from sdzero.baselines.grpo import GRPOBaselineConfig, _trainer_class, drop_zero_variance_rows, grpo_dataset

    adv = torch.tensor([0.0, 0.0, 1.2, -1.2])
    mask = torch.ones(4, 3, dtype=torch.long)
    assert drop_zero_variance_rows(adv, mask).sum(1).tolist() == [0, 0, 3, 3]

    from trl import GRPOConfig

    questions = parity.split({"train": 12})["train"]
    seen_rewards = []

    def reward(prompts, completions, completion_ids, question_index, **kw):
        # Question 0 mod 3: always right, 1 mod 3: always wrong (zero variance); else the parity of the text's
        # character codes, a coin per sample (its length was not: 6 two-character tokens are always even).
        out = [1.0 if i % 3 == 0 else 0.0 if i % 3 == 1 else float(sum(map(ord, c[-1]["content"])) % 2 == 0)
               for i, c in zip(question_index, completions)]
        seen_rewards.append(out)
        return out

    cfg = GRPOBaselineConfig()
    args = GRPOConfig(output_dir=str(tmp_path / "ckpt"), max_steps=4, per_device_train_batch_size=12,
                      num_generations=4, max_completion_length=6, learning_rate=1e-4, loss_type=cfg.loss_type,
                      epsilon_high=cfg.epsilon_high, beta=0.0, top_k=0, use_cpu=True, report_to=[], save_strategy="no",
                      logging_steps=1, seed=0)
    from sdzero.models import load_model, load_tokenizer

    trainer = _trainer_class()(model=load_model(str(tiny_model_dir), dtype="fp32"), reward_funcs=reward, args=args,
                               train_dataset=grpo_dataset(questions), processing_class=load_tokenizer(
                                   str(tiny_model_dir)))
    trainer.sdzero_trace = []
    trainer.train()
    assert len(trainer.sdzero_trace) == 4 and len(seen_rewards) == 4
    some_zero = some_live = False
    for rewards, batch in zip(seen_rewards, trainer.sdzero_trace):
        for g in range(0, len(rewards), 4):  # TRL puts a question's group on consecutive rows
            group = rewards[g : g + 4]
            zero_var = len(set(group)) == 1
            assert all((a == 0.0) == zero_var for a in batch["advantages"][g : g + 4])
            assert all(live == (not zero_var) for live in batch["rows_in_loss"][g : g + 4])
            some_zero |= zero_var
            some_live |= not zero_var
    assert some_zero and some_live  # both kinds of group were exercised


def test_sdft_teacher_reads_the_demonstration_and_scores_the_same_response(tokenizer):
    from sdzero.alignment import build_context_pair
    from sdzero.baselines.sdft import SDFTConfig, teacher_message
    from sdzero.chat import chat_prompt_ids
    from sdzero.tasks.base import Question

    cfg = SDFTConfig()
    q = Question("q", "What is 2+3?", "5")
    assert "The final answer is 5." in teacher_message(q, cfg) and "What is 2+3?" in teacher_message(q, cfg)
    q_sol = Question("q", "What is 2+3?", "5", solution="2+3 = 5, so 5.")
    assert "2+3 = 5, so 5." in teacher_message(q_sol, cfg) and "final answer is" not in teacher_message(q_sol, cfg)
    student_prompt = chat_prompt_ids(tokenizer, q.prompt)
    teacher_prompt = chat_prompt_ids(tokenizer, teacher_message(q, cfg))
    y = [70, 71, 72]
    pair = build_context_pair(student_prompt, teacher_prompt, y, 4096, end_ids=[tokenizer.eos_token_id])
    assert pair.target_ids == y + [tokenizer.eos_token_id]
    # Row j of each side predicts target j: the token right after that position is the target.
    assert [pair.student_ids[p + 1] for p in pair.student_positions] == pair.target_ids
    assert [pair.teacher_ids[p + 1] for p in pair.teacher_positions] == pair.target_ids
    assert "final answer is 5" in tokenizer.decode(pair.teacher_ids)
    cut = build_context_pair(student_prompt, teacher_prompt, y, len(teacher_prompt) + 3, end_ids=[0])
    assert cut.target_ids == y[:2]  # room for 2 of 3 tokens (the end token reserved): cut, so no end token
    with pytest.raises(SDZeroError, match="demonstration_template must contain"):
        SDFTConfig(demonstration_template="no placeholders").validate()


def test_sdft_demonstrates_the_worked_arithmetic_not_only_the_answer():
    """On the embedded task the demonstration is the expression with its value, in the prompt's answer format
    (issue 18: "The final answer is A." alone is not the paper's SDFT)."""
    from sdzero.baselines.sdft import SDFTConfig, teacher_message
    from sdzero.config import TaskConfig
    from sdzero.tasks import load_task

    task = load_task(TaskConfig())  # the embedded default: reasoning-gym basic_arithmetic
    for q in task.pool(20):
        expression = q.meta["entry"]["metadata"]["expression"]
        assert q.solution == f"{expression} = {q.answer}\nAnswer: {q.answer}"
        assert task.reward(q, q.solution) == 1.0  # the demonstration is graded right
        message = teacher_message(q, SDFTConfig())
        assert f"{expression} = {q.answer}" in message and "The final answer is" not in message
    assert load_task(TaskConfig(task="rg:gcd")).pool(3)[0].solution is None  # no expression recorded: the answer


def test_compare_end_to_end_writes_the_table_and_the_curves(tiny_model_dir, tmp_path, capsys):
    from test_pipeline import ARGS

    from sdzero.cli import main

    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_model_dir), "--output_dir", str(out), "--seeds", "0",
            "--grpo_questions_per_step", "2", "--sdft_questions_per_step", "4", "--eval_suite", "offline",
            "--eval_suite_size", "2", *ARGS]
    assert main(argv) == 0
    # Every method's model on the benchmark suite too, one table in the paper's Table 1 shape.
    suite = json.loads((out / "report" / "suite.json").read_text())
    assert set(suite["methods"]) == {"base", "rft", "grpo", "sdft", "srt", "sdzero"}
    assert "| method | GSM8K | HumanEval | Avg. |" in (out / "report" / "suite.md").read_text()
    seed = out / "seed-0"
    stages = json.loads((seed / "sdzero" / "stages.json").read_text())
    sdzero_spent = stages["collect"]["generations"] + stages["distill"]["generations"]
    state = json.loads((seed / "baselines.json").read_text())
    for m in ("rft", "grpo", "sdft"):
        assert state[m]["budget"] == sdzero_spent  # matched budgets
        assert state[m]["generations"] <= sdzero_spent
        assert (seed / f"eval-{m}.json").is_file()
        assert (seed / m / "model").is_dir() and not (seed / m / "checkpoints").exists()  # finished: not resumed
    assert state["sdft"]["generations"] == sdzero_spent  # 40 = 10 steps x 4
    report = (out / "report" / "results.md").read_text()
    for label in ("Base", "RFT", "GRPO", "SDFT", "SRT", "SD-Zero"):
        assert f"| {label} (1 seed) |" in report
    assert (out / "report" / "accuracy-vs-generations.png").is_file()
    capsys.readouterr()
    assert main(argv) == 0  # started again: nothing redone
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == 3 and "suite" not in printed.replace("report/suite", "")
    # Another Phase-2 setting is refused here (a run alone would redo Phase 2): the baselines were matched to it.
    assert main([*argv, "--distill_max_steps", "3"]) == 2
    assert "other settings (distill_max_steps: 2 then, 3 now)" in capsys.readouterr().err
    # The archive (numbers only, no models or text) rebuilds the same table.
    archive = tmp_path / "archive"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "archive_compare.py"), str(out), str(archive)],
                   check=True, capture_output=True)
    assert not list(archive.rglob("*.safetensors")) and not list(archive.rglob("model"))
    questions = json.loads((archive / "seed-0" / "eval-rft.json").read_text())["questions"]
    assert questions and "prompt" not in questions[0] and "rewards" in questions[0]  # numbers, for findings
    summary = write_compare_report(archive, [0], ["rft", "grpo", "sdft"])
    assert (archive / "report" / "results.md").read_text() == report
    # A later session resumes the compare from the archive: every stage and method is read, none redone.
    restored = tmp_path / "restored"
    shutil.copytree(archive, restored)
    capsys.readouterr()
    assert main(["compare", "--model", str(tiny_model_dir), "--output_dir", str(restored), "--seeds", "0",
                 "--grpo_questions_per_step", "2", "--sdft_questions_per_step", "4", *ARGS]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before, skipped") == 3 and printed.count(": done before (") == 7  # methods, stages
    assert not list(restored.rglob("model")) and (restored / "report" / "results.md").read_text() == report
    # A seed known only from recorded numbers joins the archived one; SD-Zero's lead is per seed.
    sd0, rft0 = (100 * summary[m]["avg@2"]["mean"] for m in ("sdzero", "rft"))
    recorded = tmp_path / "seed-7-recorded.json"
    recorded.write_text(json.dumps({"seed": 7, "avg@2": {"rft": 10.0, "sdzero": 30.0},
                                    "greedy_accuracy": {"rft": 10.0, "sdzero": 30.0}}))
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "combine_seeds.py"), str(archive),
                            "--recorded", str(recorded)], check=True, capture_output=True, text=True).stdout
    rft_row = next(line for line in table.splitlines() if line.startswith("| RFT |"))
    diffs = [sd0 - rft0, 20.0]
    mean = sum(diffs) / 2
    std = abs(diffs[0] - diffs[1]) / 2 ** 0.5
    assert f"| {rft0:.1f} / 10.0 |" in rft_row and f"| {mean:+.1f} ± {std:.1f} |" in rft_row
    assert rft_row.endswith(f"| {1 + (diffs[0] > 0)} of 2 |")
    assert next(line for line in table.splitlines() if line.startswith("| Base |")).endswith(" of 1 |")  # seed 0 only


def test_rft_ends_its_records_with_the_templates_turn_end(tmp_path, parity, monkeypatch):
    """As SRT: a tokenizer whose eos is not the template's end of turn still learns to end turns with <|im_end|>."""
    import sdzero.training as training
    from conftest import make_model, make_tokenizer

    from sdzero.baselines.rft import RFTConfig, run_rft

    tok = make_tokenizer(eos_token="<|endoftext|>")
    model_dir = tmp_path / "model"
    make_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    seen = []
    monkeypatch.setattr(training, "train_records", lambda model, records, *a: seen.extend(records) or [])
    questions = parity.split({"train": 8})["train"]
    run_rft(str(model_dir), parity, questions, RFTConfig(output_dir=str(tmp_path / "rft"), drop_truncated=False),
            SAMPLING, GenerationBudget(32), dtype="fp32")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert seen and all(r["input_ids"][-1] == r["labels"][-1] == im_end for r in seen)
