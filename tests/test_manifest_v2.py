"""Manifest version 2: a model's own pin/track of an upstream (the long form) and variants, read and
resolved by `Manifest.effective`; every bad input named at its FILE:LINE."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchkit import manifest
from patchkit.errors import BadInput, InvalidInput

A, B, C = "a" * 40, "b" * 40, "c" * 40
PATCH = "From: A <a@b>\nSubject: x\n\n"

GOOD = f"""\
version: 2
upstreams:
  mmcv:
    url: https://example.org/mmcv.git
    pin: {A}
    track: 1.x
  model-repo:
    url: https://example.org/model.git
    pin: {C}
    track: main
models:
  fbocc:
    upstreams:
      mmcv: [mmcv-npu, fbocc]
  bevdepth:
    description: BEVDepth
    upstreams:
      model-repo: [bevdepth]
      mmcv:
        pin: {B}
        layers: [mmcv-npu, bevdepth]
    overlays: [bevdepth]
    variants:
      a5:
        description: Atlas A5
        upstreams: {{mmcv: [mmcv-a5]}}
        overlays: [bevdepth-a5]
        requires: ["torch-npu==2.7.1"]
      plain: {{}}
"""


def port(root: Path, text: str, layers: tuple[tuple[str, str], ...] = (
        ("mmcv-npu", "mmcv"), ("fbocc", "mmcv"), ("bevdepth", "mmcv"), ("bevdepth", "model-repo"),
        ("mmcv-a5", "mmcv"), ("mmcv-a5", "model-repo")), overlays: tuple[str, ...] = ("bevdepth", "bevdepth-a5")) -> Path:
    for layer, up in layers:
        folder = root / "patches" / layer / up
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "series").write_text(f"0001-{layer}.patch\n")
        (folder / f"0001-{layer}.patch").write_text(PATCH)
    for name in overlays:
        (root / "overlays" / name).mkdir(parents=True, exist_ok=True)
    (root / "upstreams.yaml").write_text(text)
    return root / "upstreams.yaml"


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        manifest.load(port(tmp_path, text))
    return [str(d).replace(str(tmp_path) + "/", "") for d in info.value.diagnostics]


def test_long_form_and_variants_resolve(tmp_path: Path) -> None:
    m = manifest.load(port(tmp_path, GOOD))
    bev = m.model("bevdepth")
    assert bev.pins == {"mmcv": B} and bev.tracks == {} and bev.pin_lines == {"mmcv": 20}
    assert bev.layers == {"model-repo": ("bevdepth",), "mmcv": ("mmcv-npu", "bevdepth")}
    base = m.effective("bevdepth")
    assert base.variant is None and base.label == "bevdepth"
    assert base.upstreams["mmcv"].pin == B and base.upstreams["mmcv"].track == "1.x"
    assert base.upstreams["mmcv"].pin_line == 20 and base.upstreams["mmcv"].pinned_by == "bevdepth"
    assert base.upstreams["model-repo"] is m.upstreams["model-repo"]  # no override: the upstream itself
    assert m.effective("fbocc").upstreams["mmcv"].pin == A  # the other model keeps the upstream's pin
    a5 = bev.resolve(m, "a5")
    assert a5.label == "bevdepth[a5]" and a5.requires == ("torch-npu==2.7.1",)
    assert a5.layers["mmcv"] == ("mmcv-npu", "bevdepth", "mmcv-a5")
    assert [p.id for p in a5.patches["mmcv"]] == ["mmcv-npu/0001-mmcv-npu.patch", "bevdepth/0001-bevdepth.patch",
                                                  "mmcv-a5/0001-mmcv-a5.patch"]
    assert a5.layers["model-repo"] == ("bevdepth",) and a5.overlays == ("bevdepth", "bevdepth-a5")
    assert a5.upstreams["mmcv"].pin == B
    assert m.effective("bevdepth", "plain").layers == base.layers
    assert bev.variants["a5"].description == "Atlas A5" and bev.variants["plain"].layers == {}


def test_unknown_variant_names_the_model_line(tmp_path: Path) -> None:
    m = manifest.load(port(tmp_path, GOOD))
    with pytest.raises(BadInput) as info:
        m.effective("bevdepth", "a9")
    assert info.value.message.endswith("upstreams.yaml:15: model 'bevdepth' has no variant 'a9' (variants: a5, plain)")
    with pytest.raises(BadInput, match=r"upstreams.yaml:12: model 'fbocc' has no variant 'a5' \(variants: none\)"):
        m.effective("fbocc", "a5")


def test_version_1_loads_as_before(tmp_path: Path) -> None:
    text = GOOD.replace("version: 2\n", "version: 1\n").split("  bevdepth:")[0]
    m = manifest.load(port(tmp_path, text))
    fbocc = m.model("fbocc")
    assert fbocc.pins == {} and fbocc.variants == {}
    assert m.effective(fbocc).upstreams == {"mmcv": m.upstreams["mmcv"]}
    assert m.effective(fbocc).patches == fbocc.patches


def test_the_shipped_manifest_loads_unchanged() -> None:
    m = manifest.load(Path(__file__).parent.parent / "upstreams.yaml")
    for model in m.models.values():
        eff = m.effective(model)
        assert eff.layers == model.layers and eff.overlays == model.overlays
        assert all(eff.upstreams[up] is m.upstreams[up] for up in model.layers)


def test_version_2_forms_in_a_version_1_file(tmp_path: Path) -> None:
    got = errors(tmp_path, GOOD.replace("version: 2\n", "version: 1\n"))
    assert got == [
        "upstreams.yaml:19: model 'bevdepth': upstream 'mmcv': the long form ({pin, track, layers}) needs "
        "`version: 2` (line 1 says version 1)",
        "upstreams.yaml:23: model 'bevdepth': variants needs `version: 2` (line 1 says version 1)",
    ]
    assert errors(tmp_path / "x", GOOD.replace("version: 2\n", "version: 3\n")) == [
        "upstreams.yaml:1: unsupported manifest version '3' (this patchkit reads versions 1, 2)"]


@pytest.mark.parametrize(("old", "new", "expected"), [
    (f"pin: {B}", "pin: v1.7.2",
     "upstreams.yaml:20: model 'bevdepth': upstream 'mmcv': pin 'v1.7.2' is not a full 40-hex commit SHA "
     "(pin commits, not branches or tags; lower-case hex)"),
    ("layers: [mmcv-npu, bevdepth]", "track: 1.x",
     "upstreams.yaml:19: model 'bevdepth': upstream 'mmcv': missing required key 'layers'"),
    ("layers: [mmcv-npu, bevdepth]", "layers: [mmcv-npu, bevdepth]\n        branch: x",
     "upstreams.yaml:22: model 'bevdepth': upstream 'mmcv': unknown key 'branch' (expected one of: pin, track, layers)"),
    ("upstreams: {mmcv: [mmcv-a5]}", "upstreams: {mmcv: [mmcv-a5], mmdet: [x]}",
     "upstreams.yaml:26: model 'bevdepth': variant 'a5' names upstream 'mmdet', which the model does not have "
     "(its upstreams: model-repo, mmcv); a variant appends layers to the model's upstreams"),
    ("upstreams: {mmcv: [mmcv-a5]}", "upstreams: {mmcv: [mmcv-a5, bevdepth]}",
     "upstreams.yaml:26: model 'bevdepth': variant 'a5': layer 'bevdepth' of 'mmcv' is already the model's "
     "(line 21); appended it would be listed twice"),
    ("upstreams: {mmcv: [mmcv-a5]}", "upstreams: {mmcv: [mmcv-a5, mmcv-a5]}",
     "upstreams.yaml:26: model 'bevdepth': variant 'a5': layers of 'mmcv': layer 'mmcv-a5' is listed twice"),
    ("upstreams: {mmcv: [mmcv-a5]}", "upstreams: {mmcv: [mmcv-a6]}",
     "upstreams.yaml:26: layer 'mmcv-a6' has no series for upstream 'mmcv' (patches/mmcv-a6/mmcv/series not found)"),
    ("overlays: [bevdepth-a5]", "overlays: [bevdepth]",
     "upstreams.yaml:27: model 'bevdepth': variant 'a5': overlay set 'bevdepth' is already the model's"),
    ("overlays: [bevdepth-a5]", "overlays: [gone]",
     "upstreams.yaml:27: model 'bevdepth': variant 'a5': overlay set 'gone' not found (overlays/gone/ is not a folder)"),
    ('requires: ["torch-npu==2.7.1"]', 'requires: ["torch-npu==2.7.1", "torch-npu==2.7.1"]',
     "upstreams.yaml:28: model 'bevdepth': variant 'a5': requires: 'torch-npu==2.7.1' is listed twice"),
    ("      a5:", "      a5/x:", "upstreams.yaml:24: variant name 'a5/x' is not valid"),
    ("        description: Atlas A5", "        colour: red",
     "upstreams.yaml:25: model 'bevdepth': variant 'a5': unknown key 'colour' (expected one of: description, "
     "upstreams, overlays, requires)"),
    ("      plain: {}", "      plain: [x]", "upstreams.yaml:29: model 'bevdepth': variant 'plain' must be a mapping"),
    ("    variants:", "    variants: []\n    x-variants:",
     "upstreams.yaml:23: model 'bevdepth': variants must be a mapping"),
])
def test_every_v2_error_with_its_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    got = errors(tmp_path, GOOD.replace(old, new, 1))
    assert any(e.startswith(expected) for e in got), got


def test_a_pypi_upstream_has_no_model_pin(tmp_path: Path) -> None:
    text = GOOD.replace("  model-repo:\n    url: https://example.org/model.git\n",
                        f"  model-repo:\n    pypi: model==1.0\n    sha256: {'d' * 64}\n").replace(
        "      model-repo: [bevdepth]", f"      model-repo: {{pin: {A}, layers: [bevdepth]}}")
    assert errors(tmp_path, text) == [
        "upstreams.yaml:19: model 'bevdepth': upstream 'model-repo': 'model-repo' is a PyPI release, whose pin is "
        "the release itself; for another release declare another upstream (pypi: NAME==VERSION)"]


def test_write_pin_edits_the_models_line(tmp_path: Path) -> None:
    path = port(tmp_path, GOOD)
    m = manifest.load(path)
    manifest.write_pin(m, m.effective("bevdepth").upstreams["mmcv"], C)
    again = manifest.load(path)
    assert again.model("bevdepth").pins["mmcv"] == C and again.upstreams["mmcv"].pin == A
    manifest.write_pin(again, again.effective("fbocc").upstreams["mmcv"], C)
    assert manifest.load(path).upstreams["mmcv"].pin == C


def test_validate_lints_the_variants_patches(tmp_path: Path) -> None:
    from patchkit.validate import all_patch_refs

    m = manifest.load(port(tmp_path, GOOD))
    assert "mmcv-a5/0001-mmcv-a5.patch" in {r.id for r in all_patch_refs(m)}


def test_a_file_without_version_may_use_both_forms(tmp_path: Path) -> None:
    m = manifest.load(port(tmp_path, GOOD.replace("version: 2\n", "")))
    assert m.effective("bevdepth", "a5").upstreams["mmcv"].pin == B
