"""Every recipe parses with the command it is written for and builds every stage's config."""

from pathlib import Path

import pytest

from sdzero.cli import _parse
from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig
from sdzero.pipeline import RUN_DEFAULTS, RunConfig, stage_configs

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/run.yaml"))


def test_there_are_recipes():
    assert {p.parent.name for p in RECIPES} >= {"embedded", "paper-math-qwen3-4b", "paper-code-qwen3-4b",
                                                "paper-math-olmo3-7b"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
def test_recipe_parses_and_builds_its_configs(recipe):
    mc, tc, gc, rc, cfg = _parse((ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, RunConfig),
                                 ["--config", str(recipe)], "sdzero run", defaults=RUN_DEFAULTS)
    configs = stage_configs(cfg)
    assert set(configs) == {"collect", "srt", "distill"}
    assert sum(tc.split_sizes().values()) > 0 and gc.max_new_tokens > 0
    if recipe.parent.name.startswith("paper"):
        d = configs["distill"]
        assert (d.learning_rate, d.topk, d.teacher, d.questions_per_step) == (5e-6, 64, "frozen", 128)
        assert (tc.phase1_size, tc.phase2_size) == (10000, 9000)
        olmo = "olmo" in recipe.parent.name
        assert mc.model == ("allenai/Olmo-3-7B-Instruct" if olmo else "Qwen/Qwen3-4B-Instruct-2507")
        # the official code's wrong-answer phrase for Olmo; the paper's for Qwen
        assert rc.phrases().wrong == ("Wrong. I need to redo all." if olmo else
                                      "Wait, this response is not correct, let me start over.")
        c = configs["collect"]  # the paper's collection, not `sdzero run`'s embedded default (pairs)
        assert (c.drafts_per_question, c.revisions_per_draft, c.revise_correct, c.pair_right_drafts) == (1, 3, True,
                                                                                                         False)
        assert configs["srt"].revision_loss and configs["srt"].generation_loss  # the paper's SRT, both terms


def test_the_embedded_recipe_is_the_no_argument_default():
    parsed = _parse((ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, RunConfig), [], "sdzero run",
                    defaults=RUN_DEFAULTS)
    recipe = next(p for p in RECIPES if p.parent.name == "embedded")
    from_file = _parse((ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, RunConfig),
                       ["--config", str(recipe)], "sdzero run", defaults=RUN_DEFAULTS)
    assert parsed == from_file
