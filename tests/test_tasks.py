import json
from pathlib import Path

import pytest

from sdzero.config import DEFAULT_TASK, TaskConfig
from sdzero.errors import SDZeroError
from sdzero.tasks import load_task

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def rg(spec=DEFAULT_TASK, **kw):
    return load_task(TaskConfig(task=spec, **kw))


def test_rg_splits_are_disjoint_deterministic_and_eval_is_stable():
    task = rg()
    a = task.split({"eval": 30, "phase1": 50, "phase2": 40})
    texts = {name: {q.prompt for q in qs} for name, qs in a.items()}
    assert [len(v) for v in texts.values()] == [30, 50, 40]
    assert not (texts["eval"] & texts["phase1"]) and not (texts["eval"] & texts["phase2"])
    assert not (texts["phase1"] & texts["phase2"])
    b = rg().split({"eval": 30, "phase1": 50, "phase2": 40})
    assert [q.id for q in b["phase1"]] == [q.id for q in a["phase1"]]
    # Growing the training sets leaves the held-out set where it was.
    c = rg().split({"eval": 30, "phase1": 200, "phase2": 100})
    assert [q.id for q in c["eval"]] == [q.id for q in a["eval"]]
    # A different split seed gives a different pool.
    d = rg(split_seed=7).split({"eval": 30})
    assert [q.prompt for q in d["eval"]] != [q.prompt for q in a["eval"]]


def test_rg_reward_uses_the_scorer_and_only_full_credit():
    task = rg()
    q = task.split({"eval": 1})["eval"][0]
    gold = q.answer
    assert task.reward(q, f"Let me think.\nAnswer: {gold}") == 1.0
    assert task.reward(q, f"so the result is {gold}") == 1.0  # lenient last-number fallback
    wrong = str(int(gold) + 10)
    assert task.reward(q, f"Answer: {wrong}") == 0.0
    # basic_arithmetic gives partial credit to some wrong numbers: those must get a 0 reward.
    partial = [w for w in (gold + "0", "1" + gold.lstrip("-"), gold + "1", "9" + gold.lstrip("-"))
               if 0.0 < task.dataset.score_answer(w, q.meta["entry"]) < 1.0]
    assert partial, "expected the scorer to give partial credit to a near-miss"
    assert all(task.reward(q, f"Answer: {w}") == 0.0 for w in partial)
    assert task.reward(q, "no idea") == 0.0
    strict = rg(answer_fallback="none")
    assert strict.reward(q, f"so the result is {gold}") == 0.0


def test_rg_prompt_template():
    task = rg(prompt_template="Q: {question}\nA:")
    q = task.split({"eval": 1})["eval"][0]
    assert q.prompt.startswith("Q: ") and q.prompt.endswith("\nA:")
    with pytest.raises(SDZeroError, match="placeholder"):
        rg(prompt_template="no placeholder")


def test_rg_options_inline_and_json_merge():
    task = rg("rg:chain_sum:min_terms=2,max_terms=2", task_options=json.dumps({"min_digits": 1, "max_digits": 1}))
    assert task.options == {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def test_too_few_distinct_questions_is_a_clear_error():
    task = rg("rg:chain_sum:min_terms=2,max_terms=2,min_digits=1,max_digits=1")
    with pytest.raises(SDZeroError, match="only 200 distinct questions"):
        task.split({"eval": 150, "phase1": 100})


@pytest.mark.parametrize("spec,message", [
    ("rg:no_such_generator", "unknown reasoning-gym generator"),
    ("rg:chain_sum:bogus_option=1", "bad options"),
    ("rg:chain_sum:novalue", "expected key=value"),
    ("wat:thing", "unknown task"),
    ("something", "unknown task"),
])
def test_bad_task_specs(spec, message):
    with pytest.raises(SDZeroError, match=message):
        load_task(TaskConfig(task=spec))


def test_gsm8k_file_task_reads_the_real_data():
    task = load_task(TaskConfig(task=str(GSM8K_TEST)))
    qs = task.split({"eval": 5})["eval"]
    assert len(qs) == 5
    for q in qs:
        assert "####" in q.solution and "####" not in q.answer
        assert q.answer.replace(",", "").lstrip("-").isdigit()
        assert q.prompt.endswith("within \\boxed{}.")
        assert task.reward(q, f"... so \\boxed{{{q.answer}}}") == 1.0
        assert task.reward(q, "\\boxed{123456789}") == 0.0
    task.close()
    # The whole file is usable, and the explicit 'math:' prefix is the same task.
    assert len(load_task(TaskConfig(task=f"math:{GSM8K_TEST}")).pool(10_000)) == 1319


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_boxed_answers_and_custom_columns(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$."}])
    task = load_task(TaskConfig(task=str(f)))
    q = task.split({"eval": 1})["eval"][0]
    assert q.answer == "\\frac{1}{2}"
    assert task.reward(q, "Answer: 0.5") == 1.0
    task.close()
    g = write_jsonl(tmp_path / "c.jsonl", [{"q": "1+1?", "gold": "2"}])
    task = load_task(TaskConfig(task=str(g), question_column="q", answer_column="gold"))
    assert task.split({"eval": 1})["eval"][0].answer == "2"
    task.close()


def test_missing_column_is_a_clear_error(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"text": "1+1?", "label": "2"}])
    with pytest.raises(SDZeroError, match=r"no question column .*columns are \['text', 'label'\]"):
        load_task(TaskConfig(task=str(f)))
    with pytest.raises(SDZeroError, match="no answer column 'gold'"):
        load_task(TaskConfig(task=str(f), question_column="text", answer_column="gold"))


def test_empty_dataset_is_a_clear_error(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    with pytest.raises(SDZeroError, match="empty|cannot load"):
        load_task(TaskConfig(task=str(f)))
    g = write_jsonl(tmp_path / "one.jsonl", [{"question": "1+1?", "answer": "2"}])
    with pytest.raises(SDZeroError, match="only 1 distinct"):
        load_task(TaskConfig(task=str(g))).split({"eval": 2})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SDZeroError, match="not found"):
        load_task(TaskConfig(task=str(tmp_path / "nope.jsonl")))


# ---------------------------------------------------------------- a self-revision trace is graded by its last attempt

WRONG = "Wait, this response is not correct, let me start over."


def test_rg_trace_is_graded_by_its_final_attempt():
    task = rg()
    q = task.split({"eval": 1})["eval"][0]
    gold, wrong = q.answer, str(int(q.answer) + 10)
    fixed = f"3 + 4 = {wrong}\nAnswer: {wrong}\n\n{WRONG}\n\nThe sum is {gold}"  # the draft had the Answer: line
    broken = f"Answer: {gold}\n\nLet me rephrase the above solution.\n\nSo it is {wrong}."
    assert task.rewards([(q, fixed), (q, broken)]) == [1.0, 0.0]
    assert [v["reward"] for v in task.verdicts([(q, fixed)])] == [1.0]
    assert task.answer_text(q, task.final_attempt(fixed)) == gold
    # A run's own phrases count too, once the task is told them.
    custom = f"Answer: {wrong}\n\nHmm, no.\n\n{gold}"
    assert task.rewards([(q, custom)]) == [0.0]
    task.add_control_phrases(["Hmm, no."])
    assert task.rewards([(q, custom)]) == [1.0]


def test_math_trace_is_graded_by_its_final_attempt(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"problem": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$."}])
    task = load_task(TaskConfig(task=str(f)))
    q = task.split({"eval": 1})["eval"][0]
    assert task.rewards([(q, f"\\boxed{{2}}\n\n{WRONG}\n\nIt is 0.5")]) == [1.0]
    assert task.rewards([(q, f"\\boxed{{0.5}}\n\n{WRONG}\n\nIt is 2")]) == [0.0]
    task.close()


def test_code_trace_is_judged_on_its_final_attempt(monkeypatch):
    task = load_task(TaskConfig(task="code:humaneval"))
    seen = []
    monkeypatch.setattr(task, "judge_many", lambda pairs: seen.extend(r for _, r in pairs) or [])
    task.verdicts([(task.pool(1)[0], f"```python\nx = 1\n```\n\n{WRONG}\n\n```python\nx = 2\n```")])
    assert seen == ["```python\nx = 2\n```"]
    task.close()


def test_validation_split_sits_after_the_held_out_set_and_moves_nothing_when_empty():
    sizes = dict(eval_size=20, phase1_size=30, phase2_size=30)
    old = rg().split(TaskConfig(**sizes).split_sizes("phase2"))
    assert list(TaskConfig(**sizes).split_sizes()) == ["eval", "validation", "phase1", "phase2"]
    same = rg().split(TaskConfig(**sizes, validation_size=0).split_sizes())
    assert all([q.id for q in old[k]] == [q.id for q in same[k]] for k in ("eval", "phase1", "phase2"))
    with_val = rg().split(TaskConfig(**sizes, validation_size=25).split_sizes())
    assert [q.id for q in with_val["eval"]] == [q.id for q in old["eval"]]  # the held-out set never moves
    ids = [q.id for k in with_val for q in with_val[k]]
    assert len(ids) == len(set(ids)) == 105


def test_evaluating_on_an_empty_validation_split_is_a_clear_error(capsys):
    from sdzero.cli import main

    assert main(["eval", "--split", "validation", "--eval_size", "2"]) == 2
    assert "--validation_size" in capsys.readouterr().err
    assert main(["run", "--eval_split", "validation", "--validation_size", "0", "--output_dir", "/nonexistent/x"]) == 2
    assert "--validation_size" in capsys.readouterr().err


def test_templates_over_any_columns_and_case_insensitive_columns(tmp_path):
    """SVAMP's published format: Body + Question, Answer as a float. Columns are found in any case, and the
    template may name any of them; an unknown placeholder names the columns there are."""
    f = write_jsonl(tmp_path / "svamp.jsonl", [{"ID": "a", "Body": "Tom has 3 apples.", "Question": "How many now?",
                                                "Answer": 3.0}])
    task = load_task(TaskConfig(task=str(f), prompt_template="{Body} {Question}"))
    q = task.split({"eval": 1})["eval"][0]
    assert q.prompt == "Tom has 3 apples. How many now?" and q.answer == "3.0"
    assert task.reward(q, "So 3 apples.") == 1.0
    task.close()
    task = load_task(TaskConfig(task=str(f), prompt_template="{body} {question}"))  # {question}: the column
    assert task.split({"eval": 1})["eval"][0].prompt == "Tom has 3 apples. How many now?"
    task.close()
    with pytest.raises(SDZeroError, match=r"names \{Bdy\}.*columns are \['ID', 'Body', 'Question', 'Answer'\]"):
        load_task(TaskConfig(task=str(f), prompt_template="{Bdy} {Question}"))
    with pytest.raises(SDZeroError, match=r"names \{Body\}.*takes \{question\} only"):
        load_task(TaskConfig(task="rg:basic_arithmetic", prompt_template="{Body} {question}"))
    g = write_jsonl(tmp_path / "mawps.jsonl", [{"Problem": "2 plus 2?", "Final_Answer": 4.0}])
    task = load_task(TaskConfig(task=str(g)))
    assert task.split({"eval": 1})["eval"][0].answer == "4.0"
    task.close()


def test_conversational_messages_datasets(tmp_path):
    """A `messages` column: the question is the last user turn, the gold answer the last assistant turn (or an
    answer column when there is one)."""
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6 x 7?"},
            {"role": "assistant", "content": "6 x 7 = 42. #### 42"}]
    f = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conv}])
    task = load_task(TaskConfig(task=str(f)))
    q = task.split({"eval": 1})["eval"][0]
    assert q.prompt.startswith("What is 6 x 7?") and q.answer == "42"
    task.close()
    g = write_jsonl(tmp_path / "chat2.jsonl", [{"messages": conv[:2], "answer": "42"}])
    task = load_task(TaskConfig(task=str(g)))
    assert task.split({"eval": 1})["eval"][0].answer == "42"
    task.close()


def test_model_loading_options_reach_every_from_pretrained(tiny_model_dir, monkeypatch):
    """--trust_remote_code, --revision, --attn_implementation: parsed once, passed to every model and tokenizer
    the process loads (the tokenizer takes all but the attention kernel)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdzero import models
    from sdzero.cli import _parse
    from sdzero.config import ModelConfig

    seen = {}
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained.__func__

        def spy(klass, path, *a, _real=real, _name=cls.__name__, **kw):
            seen[_name] = dict(kw)
            return _real(klass, path, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    try:
        _parse((ModelConfig,), ["--model", str(tiny_model_dir), "--trust_remote_code", "--revision", "main",
                                "--attn_implementation", "eager"], "sdzero eval")
        model, _ = models.load_model_and_tokenizer(str(tiny_model_dir), "fp32", "cpu")
    finally:
        models.set_loading_options({})
    assert {k: seen["AutoModelForCausalLM"][k] for k in ("trust_remote_code", "revision", "attn_implementation")} \
        == {"trust_remote_code": True, "revision": "main", "attn_implementation": "eager"}
    assert seen["AutoTokenizer"] == {"trust_remote_code": True, "revision": "main"}
    assert model.config._attn_implementation == "eager"
