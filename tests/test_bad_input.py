"""Bad input gets one clear `error:` line (exit status 2) before any work, never a traceback; what is written
has the user's normal file mode. Each case here printed a traceback, or lost work, before issue 14."""

import json
import os
import stat

import pytest

from sdzero.cli import main
from sdzero.errors import SDZeroError
from sdzero import files

FAST = ["--eval_size", "2", "--phase1_size", "2", "--phase2_size", "2", "--max_new_tokens", "4"]


def run_error(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("flag, value, message", [
    ("--batch_size", "0", "batch_size must be at least 1"),
    ("--max_new_tokens", "0", "max_new_tokens must be at least 1"),
    ("--temperature", "inf", "--temperature must be a finite number"),
    ("--top_p", "0", "top_p must be in (0, 1]"),
    ("--num_samples", "0", "num_samples must be at least 1"),
    ("--eval_size", "-1", "eval_size must be 0 or more"),
])
def test_eval_rejects_bad_numbers_before_loading_anything(capsys, tmp_path, flag, value, message):
    err = run_error(capsys, "eval", *FAST, "--output", str(tmp_path / "e.json"), flag, value)
    assert message in err
    assert not (tmp_path / "e.json").exists()


def test_distill_rejects_a_nan_learning_rate(capsys, tmp_path):
    assert "--learning_rate must be a finite number, not nan" in run_error(
        capsys, "distill", *FAST, "--learning_rate", "nan", "--output_dir", str(tmp_path / "d"))
    assert "--learning_rate must be 0 or more" in run_error(
        capsys, "distill", *FAST, "--learning_rate=-1e-5", "--output_dir", str(tmp_path / "d"))


def test_training_sizes_are_checked_before_any_stage_runs(capsys, tmp_path):
    out = tmp_path / "run"
    assert "per_device_train_batch_size must be at least 1" in run_error(
        capsys, "run", *FAST, "--srt_batch_size", "0", "--output_dir", str(out))
    assert "num_train_epochs must be above 0" in run_error(
        capsys, "srt", "--num_train_epochs", "0", "--data_dir", str(tmp_path), "--output_dir", str(out))
    assert "max_grad_norm above 0" in run_error(capsys, "distill", *FAST, "--max_grad_norm", "0", "--output_dir",
                                                str(out))
    assert "grpo_num_generations must be at least 2" in run_error(
        capsys, "compare", *FAST, "--grpo_num_generations", "1", "--output_dir", str(out))
    assert "sdft_teacher must be" in run_error(capsys, "compare", *FAST, "--sdft_teacher", "x", "--output_dir",
                                               str(out))
    assert not (out / "stages.json").exists()


def test_settings_that_are_legitimate_pass():
    from sdzero.config import check_settings
    from sdzero.distill import DistillConfig

    check_settings(DistillConfig(learning_rate=0.0, max_grad_norm=float("inf")))  # a probe step; no clipping


def test_a_folder_that_is_not_a_model_is_named(capsys, tmp_path):
    (tmp_path / "notmodel").mkdir()
    err = run_error(capsys, "eval", *FAST, "--model", str(tmp_path / "notmodel"), "--output", str(tmp_path / "e.json"))
    assert "is not a model folder (no config.json" in err
    err = run_error(capsys, "eval", *FAST, "--model", str(tmp_path / "nothing-here"), "--output",
                    str(tmp_path / "e.json"))
    assert "no such folder" in err and "Repo id" not in err


def test_a_yaml_syntax_error_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [1, 2\nbatch_size: :\n")
    assert "the --config file is not valid YAML" in run_error(capsys, "eval", "--config", str(bad))


def test_a_broken_jsonl_line_is_named_by_file_and_line(capsys, tmp_path):
    data = tmp_path / "kept"
    data.mkdir()
    (data / "kept.jsonl").write_text('{"a": 1}\n\n{"a": 2\n')
    err = run_error(capsys, "srt", "--data_dir", str(data), "--output_dir", str(tmp_path / "srt"))
    assert f"{data / 'kept.jsonl'}, line 3: not valid JSON" in err
    with pytest.raises(SDZeroError, match="line 3"):
        files.read_jsonl(data / "kept.jsonl")


def test_an_empty_dataset_file_says_empty(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err = run_error(capsys, "eval", *FAST, "--task", str(empty), "--output", str(tmp_path / "e.json"))
    assert "is empty" in err and "StopIteration" not in err


def test_output_places_that_cannot_be_written_fail_before_any_work(capsys, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "is a file, not a folder" in run_error(capsys, "collect", *FAST, "--output_dir", str(a_file))
    assert "is a file, not a folder" in run_error(capsys, "run", *FAST, "--output_dir", str(a_file))
    assert "cannot be written" in run_error(capsys, "distill", *FAST, "--output_dir", "/proc/sdzero-test")
    assert "is a file, not a folder" in run_error(capsys, "eval", *FAST, "--output", str(a_file / "e.json"))
    assert "cannot be written" in run_error(capsys, "eval", *FAST, "--output", "/proc/sdzero-test/e.json")
    assert "is a folder" in run_error(capsys, "eval", *FAST, "--output", str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_fails_before_any_work(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "cannot be written" in run_error(capsys, "eval", *FAST, "--output", str(ro / "e.json"))
        assert "cannot be written" in run_error(capsys, "srt", "--data_dir", str(tmp_path), "--output_dir",
                                                str(ro / "srt"))
    finally:
        ro.chmod(0o755)
    with pytest.raises(SDZeroError, match="cannot be written"):
        files.check_output_dir("/proc/sdzero-test")


def test_a_read_only_place_is_reported_also_when_running_as_root(capsys, tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # what a read-only folder does to a non-root user
    assert "cannot be written: Permission denied" in run_error(capsys, "eval", *FAST, "--output",
                                                               str(tmp_path / "e.json"))


def test_written_files_and_model_folders_get_the_users_normal_mode(tmp_path):
    old = os.umask(0o022)
    try:
        files.atomic_write_json(tmp_path / "report.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644
        assert json.loads((tmp_path / "report.json").read_text()) == {"a": 1}
        assert stat.S_IMODE(files.make_temp_dir(tmp_path, ".model-").stat().st_mode) == 0o755
        os.umask(0o077)  # a private umask is respected too
        files.atomic_write_json(tmp_path / "private.json", {})
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_a_saved_model_folder_is_readable_by_the_group(tmp_path, tiny_model, tokenizer):
    from sdzero.training import save_model

    old = os.umask(0o022)
    try:
        save_model(tiny_model, tokenizer, tmp_path / "model", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "model" / "sdzero.json").stat().st_mode) == 0o644
