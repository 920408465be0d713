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


@pytest.mark.parametrize("model", MODELS)
def test_recipe_has_a_smoke_script_on_the_shared_loop(model: str) -> None:
    """Every model can be smoke-trained: its script exists, compiles, and drives patchkit's loop
    (which checks finite losses and gradients) rather than a loop of its own."""
    import ast

    loaded = recipe.load(ROOT, model)
    assert loaded.smoke is not None, f"train/{model}.yaml has no smoke: section"
    script = ROOT / loaded.smoke.script
    tree = ast.parse(script.read_text(), str(script))
    calls = {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)}
    assert {"smoke.init", "smoke.run"} <= calls, calls
    assert any(c.startswith("synthetic.") for c in calls), "the batch is not made by patchkit.train.synthetic"


@pytest.mark.parametrize("model", MODELS)
def test_shipped_overlays_declare_fingerprinted_targets(model: str) -> None:
    """Every overlay of every model names its target and carries the fingerprint drift checks compare."""
    from patchkit.manifest import load as load_manifest
    from patchkit.overlay import static

    manifest = load_manifest(ROOT / "upstreams.yaml")
    found, _files = static.load_sets(ROOT, manifest.model(model).overlays)
    assert found, f"{model} has no overlays"
    assert [t.target for t in found if not t.fingerprint] == []
    assert len({t.target for t in found}) == len(found), "a target is replaced twice"
