from __future__ import annotations

from pathlib import Path

import pytest

from patchkit import manifest
from patchkit.errors import InvalidInput
from tests.gitfixtures import patchkit

SHA = "a" * 40

BROKEN = f"""\
upstreams:
  mmcv:
    url: https://example.org/mmcv.git
    pin: {SHA}
    track: 1.x
    branch: main
  mmdet:
    url: https://example.org/mmdet.git
    track: v2.28.2
  mmdet3d:
    url: https://example.org/mmdet3d.git
    pin: v1.0.0rc4
    track: v1.0.0rc4
  lightning:
    url: https://example.org/lightning.git
    pin: {SHA.upper()}
    track: "1.9"
models:
  fbocc:
    upstreams:
      mmcv: [mmcv-npu]
      fb-bev: [fbocc]
  surroundocc:
    overlay: []
    upstreams:
      mmcv: [mmcv-npu, mmcv-npu]
  bevdepth:
    upstreams: [mmcv]
  mmcv:
    upstreams:
      mmcv: [missing-layer]
colour: blue
"""


def write_port(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "upstreams.yaml").write_text(text)
    series = root / "patches/mmcv-npu/mmcv"
    series.mkdir(parents=True)
    (series / "series").write_text("# shared NPU layer\n0001-present.patch\n\n0002-missing.patch\n"
                                   "0001-present.patch\n0003-x.patch -p0\n")
    (series / "0001-present.patch").write_text("From: A <a@b>\nSubject: x\n\n")
    (series / "0003-x.patch").write_text("From: A <a@b>\nSubject: x\n\n")
    return root / "upstreams.yaml"


def test_every_schema_error_with_its_line(tmp_path: Path) -> None:
    path = write_port(tmp_path, BROKEN)
    with pytest.raises(InvalidInput) as info:
        manifest.load(path)
    got = [str(d).replace(str(tmp_path) + "/", "") for d in info.value.diagnostics]
    expected = [
        "upstreams.yaml:6: upstream 'mmcv': unknown key 'branch' (expected one of: url, pypi, sha256, pin, track,"
        " exclude, install)",
        "upstreams.yaml:7: upstream 'mmdet': missing required key 'pin'",
        "upstreams.yaml:12: upstream 'mmdet3d': pin 'v1.0.0rc4' is not a full 40-hex commit SHA"
        " (pin commits, not branches or tags; lower-case hex)",
        f"upstreams.yaml:16: upstream 'lightning': pin '{SHA.upper()}' is not a full 40-hex commit SHA"
        " (pin commits, not branches or tags; lower-case hex)",
        "upstreams.yaml:22: model 'fbocc' names unknown upstream 'fb-bev' (declared: mmcv)",
        "patches/mmcv-npu/mmcv/series:4: patch file 0002-missing.patch not found in patches/mmcv-npu/mmcv"
        " (layer 'mmcv-npu', named in upstreams.yaml:21)",
        "patches/mmcv-npu/mmcv/series:5: 0001-present.patch is listed twice (first on line 2)",
        "patches/mmcv-npu/mmcv/series:6: unsupported option '-p0' for 0003-x.patch"
        " (git format-patch files apply with -p1 only)",
        "upstreams.yaml:24: model 'surroundocc': unknown key 'overlay' (expected one of: description, upstreams,"
        " overlays, variants)",
        "upstreams.yaml:26: model 'surroundocc': layers of 'mmcv': layer 'mmcv-npu' is listed twice",
        "upstreams.yaml:28: model 'bevdepth': upstreams must be a mapping",
        "upstreams.yaml:31: layer 'missing-layer' has no series for upstream 'mmcv'"
        " (patches/missing-layer/mmcv/series not found)",
        "upstreams.yaml:32: top level: unknown key 'colour' (expected one of: version, upstreams, models, toolchain)",
    ]
    assert sorted(got) == sorted(expected)


def test_cli_reports_all_errors_with_exit_2(tmp_path: Path) -> None:
    write_port(tmp_path, BROKEN)
    for command in (["validate"], ["list"], ["apply", "fbocc"], ["status"]):
        run = patchkit(tmp_path, *command)
        assert run.code == 2, (command, run.text)
        assert "upstreams.yaml:7: upstream 'mmdet': missing required key 'pin'" in run.err
        assert "upstreams.yaml:32: top level: unknown key 'colour'" in run.err
        assert "13 errors found" in run.err
        assert "Traceback" not in run.text


@pytest.mark.parametrize(("text", "expected"), [
    ("upstreams:\n  a: [1, 2\nmodels: {}\n", "upstreams.yaml:3: invalid YAML: expected ',' or ']', but got ':'"),
    ("upstreams:\n\ta: 1\n", "upstreams.yaml:2: invalid YAML: found character '\\t' that cannot start any token"),
    ("", "upstreams.yaml:1: the manifest is empty"),
    ("- a\n- b\n", "upstreams.yaml:1: top level must be a mapping"),
    ("version: 3\nupstreams: {}\nmodels: {}\n", "upstreams.yaml:1: unsupported manifest version '3'"),
    ("upstreams: {}\n", "upstreams.yaml:1: top level: missing required key 'models'"),
    (f"upstreams:\n  a:\n    url: x\n    pin: {SHA}\n    track: m\n  a:\n    url: y\n    pin: {SHA}\n"
     "    track: m\nmodels: {}\n", "upstreams.yaml:6: upstreams: duplicate key 'a' (first on line 2)"),
    (f"upstreams:\n  a:\n    url: [x]\n    pin: {SHA}\n    track:\nmodels: {{}}\n",
     "upstreams.yaml:3: upstream 'a': url must be a non-empty string"),
    (f"upstreams:\n  ../a:\n    url: x\n    pin: {SHA}\n    track: m\nmodels: {{}}\n",
     "upstreams.yaml:2: upstream name '../a' is not valid"),
])
def test_single_errors(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "upstreams.yaml").write_text(text)
    run = patchkit(tmp_path, "validate")
    assert run.code == 2
    assert expected in run.err, run.err
    assert "Traceback" not in run.text


def test_empty_track_is_reported(tmp_path: Path) -> None:
    (tmp_path / "upstreams.yaml").write_text(f"upstreams:\n  a:\n    url: x\n    pin: {SHA}\n    track:\nmodels: {{}}\n")
    run = patchkit(tmp_path, "validate")
    assert "upstreams.yaml:5: upstream 'a': track must be a non-empty string" in run.err


def test_manifest_found_in_parent_and_overridable(tmp_path: Path) -> None:
    text = f"upstreams:\n  a:\n    url: x\n    pin: {SHA}\n    track: m\nmodels:\n  m:\n    upstreams:\n      a:\n"
    (tmp_path / "upstreams.yaml").write_text(text)
    deep = tmp_path / "sub/dir"
    deep.mkdir(parents=True)
    run = patchkit(deep, "list", "--json")
    assert run.code == 0, run.text
    assert '"name": "m"' in run.out
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    assert patchkit(elsewhere, "list").code == 2
    assert "no upstreams.yaml" in patchkit(elsewhere, "list").err
    run = patchkit(elsewhere, "--manifest", str(tmp_path / "upstreams.yaml"), "list")
    assert run.code == 0 and "a " in run.out


def test_install_lists_are_plain_strings(tmp_path: Path) -> None:
    """pip arguments repeat (`--config-settings` twice) and are no layer names; `after` must not repeat."""
    head = f"upstreams:\n  a:\n    url: x\n    pin: {SHA}\n    track: m\n    install:\n"
    pip_args = '      pip_args: ["--config-settings", "a=1", "--config-settings", "b=2"]\n'
    (tmp_path / "upstreams.yaml").write_text(head + pip_args + "models: {}\n")
    loaded = manifest.load(tmp_path / "upstreams.yaml")
    assert loaded.upstreams["a"].install == {"build": "wheel",
                                             "pip_args": ["--config-settings", "a=1", "--config-settings", "b=2"]}
    (tmp_path / "upstreams.yaml").write_text(head + "      after: [b, b]\n      requires: 7\nmodels: {}\n")
    run = patchkit(tmp_path, "validate")
    assert run.code == 2
    assert "upstreams.yaml:7: upstream 'a': install: after: 'b' is listed twice" in run.err, run.err
    assert "upstreams.yaml:8: upstream 'a': install: requires must be a list" in run.err, run.err


def _nodes(node: object) -> list[tuple[object, ...]]:
    """Every node of a composed tree: kind, tag, value, start and end line and column."""
    import yaml

    assert isinstance(node, yaml.Node)
    out: list[tuple[object, ...]] = [(type(node).__name__, node.tag, node.value if isinstance(node, yaml.ScalarNode) else None,
                                      node.start_mark.line, node.start_mark.column, node.end_mark.line, node.end_mark.column)]
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    for child in children:
        out += _nodes(child)
    return out


def test_fast_yaml_composes_the_same_tree_and_keeps_pyyaml_errors() -> None:
    """The manifests and recipes are composed with libyaml's parser: the same nodes, lines and columns as
    PyYAML's own; a document it refuses is composed again by PyYAML, so the message is PyYAML's."""
    import yaml

    from patchkit import yamlcheck

    root = Path(__file__).resolve().parent.parent
    texts = [p.read_text(encoding="utf-8") for p in [root / "upstreams.yaml", *sorted((root / "train").glob("*.yaml"))]]
    for text in texts + [BROKEN, "a: [1, {b: 'x'}]\n? c\n: |\n  block\n"]:
        assert _nodes(yamlcheck.compose(text)) == _nodes(yaml.compose(text, Loader=yaml.SafeLoader))
    for bad in ("a: b: c\n", "x: [1, 2\ny: 3\n", "- a\nb: c\n"):
        with pytest.raises(yaml.YAMLError) as fast:
            yamlcheck.compose(bad)
        with pytest.raises(yaml.YAMLError) as slow:
            yaml.compose(bad, Loader=yaml.SafeLoader)
        assert str(fast.value) == str(slow.value)


def test_a_series_is_its_refs_without_an_object_per_patch(tmp_path: Path) -> None:
    """A model's patches on an upstream are its layers' series files, each held as two strings: every way of
    reading them (iteration, an index, a negative one, a slice) gives the refs a series file names, at their
    lines; it equals any sequence of the same refs, and comes back from a memo exactly."""
    import json

    from patchkit import memo

    root = tmp_path / "port"
    for layer, names in {"base": ["0001-a.patch", "0002-b.patch"], "own": ["0001-c.patch", "0002-d.patch",
                                                                         "0003-e.patch"]}.items():
        folder = root / "patches" / layer / "up"
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_text("x")
        (folder / "series").write_text("# a comment\n\n" + "\n".join(f"{n}  # why" for n in names) + "\n")
    (root / "upstreams.yaml").write_text(f"upstreams:\n  up:\n    url: https://example.org/up.git\n    pin: {SHA}\n"
                                         "    track: main\nmodels:\n  m:\n    upstreams:\n      up: [base, own]\n")
    series = manifest.load(root / "upstreams.yaml").models["m"].patches["up"]
    assert isinstance(series, manifest.Series) and len(series.files) == 2
    expected = tuple(manifest.PatchRef(layer, "up", name, "", root / "patches" / layer / "up" / "series", line)
                     for layer, names in (("base", ["0001-a.patch", "0002-b.patch"]),
                                          ("own", ["0001-c.patch", "0002-d.patch", "0003-e.patch"]))
                     for line, name in enumerate(names, 3))
    assert len(series) == 5 and tuple(series) == expected and series == expected and list(series) == list(expected)
    assert [series[i] for i in range(5)] == list(expected) and [series[i] for i in range(-5, 0)] == list(expected)
    assert series[1:4] == expected[1:4] and series[::-2] == expected[::-2]
    assert series[3].file == str(root / "patches" / "own" / "up" / "0002-d.patch")
    for outside in (5, -6):
        with pytest.raises(IndexError):
            series[outside]
    base, own = (manifest.Series((f,)) for f in series.files)
    assert base + own == series and hash(base + own) == hash(series) and () + base == base
    assert manifest.NO_PATCHES + base == base and len(manifest.NO_PATCHES) == 0 and list(manifest.NO_PATCHES) == []
    assert series != expected[:4] and series != base and series != "not a series"
    decode = memo.decoder([manifest.Series, manifest.SeriesFile])
    back = decode(json.loads(json.dumps(memo.encode({"a": series, "b": series}))))
    assert back["a"] == series and type(back["a"]) is manifest.Series
    assert back["a"].files[1].names is back["b"].files[1].names  # one string for a series file however many use it


def test_a_series_name_outside_its_folder_is_refused_at_its_line() -> None:
    from patchkit import series

    text = "/abs.patch\n../up.patch\nsub/../../b.patch\nsub/ok.patch\n..x.patch\n./here.patch\n"
    entries, problems = series.parse_text(text, "patches/npu/up/series")
    assert [e.name for e in entries] == ["sub/ok.patch", "..x.patch", "./here.patch"]
    assert [(p.line, p.message) for p in problems] == [
        (1, "patch name '/abs.patch' points outside the series folder"),
        (2, "patch name '../up.patch' points outside the series folder"),
        (3, "patch name 'sub/../../b.patch' points outside the series folder")]
