"""`sdzero run` end to end on a tiny model: every stage, the report, and no stage redone on a rerun."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import parity_task  # noqa: F401  (registers the parity: task)
import pytest

from sdzero.cli import main

ARGS = ["--task", "parity:", "--eval_size", "4", "--phase1_size", "8", "--phase2_size", "8", "--max_new_tokens", "8",
        "--temperature", "1.0", "--eval_num_samples", "2", "--srt_num_train_epochs", "1", "--srt_batch_size", "4",
        "--distill_max_steps", "2", "--distill_questions_per_step", "4", "--distill_warmup_steps", "0",
        "--distill_skip_truncated", "false", "--collect_drop_truncated", "false", "--dtype", "fp32"]


def test_run_goes_through_every_stage_and_reports(tiny_model_dir, tmp_path, capsys):
    # A random model rarely ends a revision within 8 tokens: truncated revisions are kept so Phase 1 has data.
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS]) == 0
    state = json.loads((out / "stages.json").read_text())
    assert list(state) == ["settings", "eval-base", "collect", "srt", "eval-srt", "distill", "eval-sdzero", "report"]
    assert state["distill"]["generations"] == 8 and state["eval-base"]["generations"] > 0
    report = (out / "report" / "results.md").read_text()
    assert "| metric | base | SRT | SD-Zero |" in report and "avg@2" in report
    assert "Phase 2: 2 steps" in report and "response_length" in report  # the first-vs-last steps summary
    data = json.loads((out / "report" / "results.json").read_text())
    assert set(data["models"]) == {"base", "SRT", "SD-Zero"}
    assert (out / "report" / "phase2-reward-length.png").is_file() and (out / "report" / "phase2-kl.png").is_file()
    assert list((out / "report").glob("selfloc-step-*.html"))
    # Started again: nothing is redone.
    capsys.readouterr()
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS]) == 0
    assert capsys.readouterr().out.count("skipped") == 7
    # Started again with other settings: refused, rather than mixing stages made with different settings.
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS, "--distill_max_steps",
                 "3"]) == 2
    assert "other settings (distill_max_steps)" in capsys.readouterr().err
    # A run made before a setting existed matches while that setting stays at its default, and only then.
    del state["settings"]["distill_skip_first_tokens"]
    (out / "stages.json").write_text(json.dumps(state))
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS]) == 0
    assert capsys.readouterr().out.count("skipped") == 7
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS,
                 "--distill_skip_first_tokens", "1"]) == 2
    assert "other settings (distill_skip_first_tokens)" in capsys.readouterr().err


def test_run_stops_after_the_stage_asked_for(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), "--stop_after", "eval-base",
                 *ARGS]) == 0
    assert list(json.loads((out / "stages.json").read_text())) == ["settings", "eval-base"]
    with pytest.raises(SystemExit):
        main(["run", "--stop_after"])


def test_unknown_stage_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(tmp_path), "--stop_after", "lunch",
                 *ARGS]) == 2
    assert "stop_after must be one of" in capsys.readouterr().err


def test_run_under_accelerate_launch_with_two_processes(tiny_model_dir, tmp_path):
    """SRT and Phase 2 train on both processes; evaluations, collection and the report run once."""
    out = tmp_path / "run2"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    worker = Path(__file__).resolve().parent / "sdzero_worker.py"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           str(worker), "run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "stages.json").read_text())
    assert list(state)[-1] == "report" and state["eval-base"]["generations"] == 20  # evaluated once, not twice
    assert json.loads((out / "distill" / "model" / "sdzero.json").read_text())["processes"] == 2
    assert (out / "report" / "results.md").is_file()
