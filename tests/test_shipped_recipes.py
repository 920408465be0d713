"""The recipes this repository ships for the five models are valid recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchkit.train import recipe

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted(p.stem for p in (ROOT / "train").glob("*.yaml"))


def test_the_five_models_have_recipes() -> None:
    assert {"surroundocc", "fbocc", "bevdepth", "tpvformer", "sparse4d"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_recipe_is_valid(model: str) -> None:
    loaded = recipe.load(ROOT, model)
    assert loaded.step_time and loaded.metrics and loaded.batch and loaded.performance_steps
    assert loaded.global_batch and loaded.cards
