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
    assert (out / "report" / "accuracy.png").is_file() and "**SD-Zero is " in report
    assert list((out / "report").glob("selfloc-step-*.html"))
    log = (out / "sdzero.log").read_text()  # the run's messages, time-stamped, beside its outputs
    assert "[run] srt ..." in log and "[run] eval-sdzero ..." in log
    # A finished stage is never resumed: its checkpoints (3 GB a stage at 135M) are gone, its model stays.
    assert "distill: finished, its checkpoints removed" in log and not (out / "distill" / "checkpoints").exists()
    assert (out / "distill" / "model" / "config.json").is_file()
    # Started again: nothing is redone.
    capsys.readouterr()
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS]) == 0
    assert capsys.readouterr().out.count("skipped") == 7
    # Started again with another shared setting: refused (every stage depends on it).
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS, "--temperature", "0.9"]) == 2
    err = capsys.readouterr().err  # the values then and now, so the user can resume with the earlier ones
    assert "other settings (temperature: 1.0 then, 0.9 now)" in err and "Pass the earlier values" in err
    # With another Phase-2 setting: Phase 2 and the stages after it are redone, the others kept, and the old
    # Phase-2 outputs move to superseded/ with the settings they were made under (a sweep keeps every point).
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS, "--distill_max_steps",
                 "3", "--keep_checkpoints", "true"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 4 and "re-running distill, eval-sdzero, report" in printed
    again = json.loads((out / "stages.json").read_text())
    assert again["distill"]["generations"] == 12 and again["settings"]["distill_max_steps"] == 3
    assert again["collect"] == state["collect"] and again["srt"] == state["srt"]
    assert list((out / "distill" / "checkpoints").glob("step-*"))  # kept when asked
    (old,) = (out / "superseded").iterdir()
    assert json.loads((old / "stages.json").read_text())["settings"]["distill_max_steps"] == 2
    assert len((old / "distill" / "log.jsonl").read_text().splitlines()) == 2
    assert (old / "eval-sdzero.json").is_file() and (old / "report" / "results.md").is_file()
    # A run made before a setting existed matches while that setting stays at its default.
    del again["settings"]["distill_skip_first_tokens"]
    del again["settings"]["trust_remote_code"]  # a ModelConfig field, as much as a RunConfig one
    (out / "stages.json").write_text(json.dumps(again))
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS, "--distill_max_steps",
                 "3"]) == 0
    assert capsys.readouterr().out.count("skipped") == 7


def test_which_stages_a_setting_change_makes_stale():
    from sdzero.pipeline import stages_changed_by

    assert stages_changed_by(["distill_learning_rate"]) == ["distill", "eval-sdzero", "report"]
    assert stages_changed_by(["srt_batch_size", "distill_teacher"]) == ["srt", "eval-srt", "distill", "eval-sdzero",
                                                                        "report"]
    assert stages_changed_by(["use_lora"])[0] == "srt"
    assert stages_changed_by(["collect_drafts_per_question"])[0] == "collect"
    assert stages_changed_by(["eval_num_samples"]) == ["eval-base", "eval-srt", "eval-sdzero", "report"]
    assert stages_changed_by(["distill_max_steps", "temperature"]) is None  # a shared setting: every stage
    # logging, checkpointing and memory settings change how a stage runs, not what it makes: nothing redone
    assert stages_changed_by(["report_to", "srt_logging_steps", "distill_save_steps",
                              "srt_gradient_checkpointing", "gradient_checkpointing"]) == []


def test_run_exposes_every_stage_field_and_the_shared_training_flags(tmp_path):
    """A field of a stage's config is a `sdzero run` flag with the stage's prefix, and --use_lora /
    --gradient_checkpointing / --report_to reach both training stages."""
    from dataclasses import fields

    from sdzero.distill import DistillConfig
    from sdzero.pipeline import RunConfig, stage_configs
    from sdzero.srt import SRTConfig

    names = {f.name for f in fields(RunConfig)}
    assert {"distill_beta", "distill_topk", "srt_mode", "srt_gradient_checkpointing", "collect_max_kept"} <= names
    assert {f"distill_{f.name}" for f in fields(DistillConfig) if f.name not in ("output_dir", "resume",
                                                                                "stop_after_steps")} <= names
    assert "srt_batch_size" in names and {f.name for f in fields(SRTConfig)} >= {"per_device_train_batch_size"}
    cfg = RunConfig(output_dir=str(tmp_path), use_lora=True, gradient_checkpointing=True, srt_batch_size=4,
                    distill_beta=0.25)
    configs = stage_configs(cfg, seed=3)
    assert configs["srt"].use_lora and configs["distill"].use_lora
    assert configs["srt"].gradient_checkpointing and configs["distill"].gradient_checkpointing
    assert configs["srt"].per_device_train_batch_size == 4 and configs["srt"].seed == 3
    assert configs["distill"].beta == 0.25 and configs["distill"].max_steps == 20  # run's own default
    assert configs["collect"].drafts_per_question == 8 and configs["srt"].data_dir == str(tmp_path / "phase1")
    # SRT on L_revision alone by default (issue 13's ablation); the stage command keeps the paper's two terms
    assert configs["srt"].revision_loss and not configs["srt"].generation_loss
    assert SRTConfig().generation_loss


def test_run_stops_after_the_stage_asked_for(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), "--stop_after", "eval-base",
                 *ARGS]) == 0
    assert list(json.loads((out / "stages.json").read_text())) == ["settings", "eval-base"]
    with pytest.raises(SystemExit):
        main(["run", "--stop_after"])


def test_an_older_run_without_the_srt_loss_setting_trained_both_terms(tiny_model_dir, tmp_path, capsys):
    """A record made before stage settings were stored has no srt_generation_loss; its SRT trained both terms
    (the default then), so today's default (L_revision alone) is a change, and the paper's is not."""
    out = tmp_path / "run"
    base = ["run", "--model", str(tiny_model_dir), "--output_dir", str(out), "--stop_after", "eval-base", *ARGS]
    assert main(base) == 0
    state = json.loads((out / "stages.json").read_text())
    assert state["settings"].pop("srt_generation_loss") is False
    (out / "stages.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main(base) == 0
    assert "settings changed (srt_generation_loss)" in capsys.readouterr().out
    (out / "stages.json").write_text(json.dumps(state))
    assert main([*base, "--srt_generation_loss", "true"]) == 0
    printed = capsys.readouterr().out
    assert "settings changed" not in printed and "eval-base: done before" in printed


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


def test_report_says_where_sd_zero_ends_and_gives_intervals():
    from sdzero.reports import verdicts, wilson_interval

    lo, hi = wilson_interval(0.3, 100)
    assert 0.21 < lo < 0.22 and 0.39 < hi < 0.40  # the textbook Wilson interval for 30/100
    table = {"base": {"avg@2": 0.20}, "SRT": {"avg@2": 0.30}, "SD-Zero": {"avg@2": 0.25}}
    assert verdicts(table, 2) == ["SD-Zero is below SRT by 5.0 points (avg@2)."]
    table["SD-Zero"]["avg@2"] = 0.15
    assert verdicts(table, 2) == ["SD-Zero is below SRT by 15.0 points and below base by 5.0 points (avg@2)."]
    table["SD-Zero"]["avg@2"] = 0.35
    assert verdicts(table, 2) == ["SD-Zero is at or above SRT and base (avg@2)."]


def test_push_to_hub_uploads_the_model_with_a_card_that_says_how_it_was_made(tiny_model_dir, tmp_path, monkeypatch):
    """Up to the upload call, with the Hub client replaced by a local fake that records what it was given."""
    import huggingface_hub

    calls = []

    class FakeHub:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private))
            return f"https://hub.example/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message=""):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            calls.append(("card", (Path(folder_path) / "README.md").read_text()))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(out), *ARGS, "--push_to_hub",
                 "--hub_model_id", "me/tiny-sdzero", "--hub_private"]) == 0
    assert calls[0] == ("create_repo", "me/tiny-sdzero", True)
    assert calls[1][0] == "upload_folder"
    assert {"config.json", "README.md", "stages.json", "sdzero.json"} <= set(calls[1][2])
    card = calls[2][1]
    assert "Let me rephrase the above solution." in card and "Wait, this response is not correct" in card
    assert "| SD-Zero |" in card and "distill_max_steps: 2" in card and "task: \"parity:\"" in card
    assert "srt_generation_loss: false" in card  # SRT on L_revision alone: the default's deviation from the paper
    # without a repo id: one clear error before any work
    assert main(["run", "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "x"), *ARGS,
                 "--push_to_hub"]) == 2
    assert not (tmp_path / "x" / "stages.json").exists()
