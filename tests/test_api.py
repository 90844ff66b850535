"""The README's Python API example, run as a script exactly as written (no __main__ guard), and the
API's pieces on the tiny model."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdzero.errors import SDZeroError

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\n```python\n(.*?)```\n<!-- /api-example -->", text, re.S)
    assert block, "README.md lost its API example"
    return block.group(1)


def test_readme_api_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^\d+ tuples$", done.stdout, re.M), done.stdout
    for stage in ("srt", "distill"):
        meta = json.loads((tmp_path / "out" / stage / "model" / "sdzero.json").read_text())
        assert meta["base_model"]
    assert len((tmp_path / "out" / "distill" / "log.jsonl").read_text().splitlines()) == 2


def test_public_names_are_exported():
    import sdzero

    for name in ("SRTConfig", "SRTTrainer", "DistillConfig", "DistillTrainer", "CollectConfig", "SamplingParams",
                 "Question", "Task", "FunctionTask"):
        assert getattr(sdzero, name).__name__ == name
    with pytest.raises(AttributeError):
        sdzero.NoSuchThing


def test_datasets_of_strings_dicts_and_hf_datasets_become_questions():
    from datasets import Dataset

    from sdzero.tasks.user import as_questions, as_task

    qs = as_questions(["What is 1+1?", "What is 2+2?"])
    assert qs[0].prompt == "What is 1+1?" and qs[0].id.startswith("q-")
    # ids without an id column come from the prompt, so resumed work cannot mix two datasets up
    assert qs[0].id == as_questions(["x", "What is 1+1?"])[1].id and qs[0].id != qs[1].id
    rows = [{"problem": "2+2?", "answer": 4, "id": "a"}, {"problem": "3+3?", "answer": 6, "id": "b"}]
    for data in (rows, Dataset.from_list(rows)):
        qs = as_questions(data)
        assert [(q.id, q.prompt, q.answer) for q in qs] == [("a", "2+2?", "4"), ("b", "3+3?", "6")]
        assert qs[0].meta["problem"] == "2+2?"
    with pytest.raises(SDZeroError, match="no prompt column.*columns: text"):
        as_questions([{"text": "x"}])
    task = as_task(lambda q, r: r.strip() == q.answer)
    q = as_questions([{"question": "1+1?", "answer": "2"}])[0]
    # graded by the final attempt: the text after the last control phrase
    trace = "3\n\nWait, this response is not correct, let me start over.\n\n2"
    assert task.rewards([(q, trace), (q, "3")]) == [1.0, 0.0]
    with pytest.raises(SDZeroError, match="reward_funcs must be"):
        as_task(42)


def test_trainers_take_a_model_path(tiny_model_dir, tmp_path):
    """A pathlib.Path names a model as a string does."""
    from sdzero import DistillConfig, DistillTrainer, SamplingParams

    trainer = DistillTrainer(Path(tiny_model_dir), lambda q, r: 1.0, ["a", "b"],
                             DistillConfig(output_dir=str(tmp_path / "d"), max_steps=1, questions_per_step=2,
                                           precision="fp32", selfloc_samples=0),
                             sampling=SamplingParams(max_new_tokens=4, temperature=1.0))
    assert trainer.train()["finished"]
    trainer.save_model()
    assert json.loads((tmp_path / "d" / "model" / "sdzero.json").read_text())["base_model"] == str(tiny_model_dir)


def test_trainers_take_a_model_object(tiny_model_dir, tmp_path):
    """A model object (trained in place) with its tokenizer, a reward function and a list of strings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdzero import DistillConfig, DistillTrainer, SamplingParams

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SDZeroError, match="processing_class"):
        DistillTrainer(model, lambda q, r: 1.0, ["a"])
    trainer = DistillTrainer(model, lambda q, r: float(len(r) % 2 == 0), [f"Say something #{i}." for i in range(8)],
                             DistillConfig(output_dir=str(tmp_path / "d"), max_steps=2, questions_per_step=4,
                                           learning_rate=1e-3, warmup_steps=0, precision="fp32", selfloc_samples=0),
                             sampling=SamplingParams(max_new_tokens=6, temperature=1.0), processing_class=tok)
    result = trainer.train()
    assert result["finished"] and len(result["history"]) == 2
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # trained in place
    trainer.save_model()
    assert (tmp_path / "d" / "model" / "config.json").is_file()
