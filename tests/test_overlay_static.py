"""Overlays seen statically: fingerprints, drift on real upstream changes, whole-file overlays."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gitfixtures import commit, git, make_upstream, patchkit, write_layer, write_one_upstream_port

CORE = '''\
"""The core module."""

K = 3


def f(x):
    return x + 1


class C:
    def m(self, y):
        return y * 2

    @classmethod
    def cm(cls):
        return "cm"

    @property
    def p(self):
        return "p"
'''

CONFIG = "".join(f"setting_{i} = {i}\n" for i in range(1, 21))

OVERLAY = '''\
from patchkit.overlay import original, replace, replace_value


@replace("upkg.core:f", upstream="up")
def f(x):
    return original(f)(x) + 100


@replace("upkg.core:C.m", upstream="up")
def m(self, y):
    return y * 3


@replace(
    "upkg.core:C.cm",
    upstream="up",
)
def cm(cls):
    return "npu"


replace_value("upkg.core:K", 4, upstream="up")
'''


@dataclass
class OverlayPort:
    root: Path
    up: Path
    pin: str

    def overlay(self) -> str:
        return (self.root / "overlays/m/npu.py").read_text()


@pytest.fixture
def oport(tmp_path: Path) -> OverlayPort:
    up = tmp_path / "up"
    pin = make_upstream(up, {"upkg/__init__.py": "", "upkg/core.py": CORE, "upkg/config.py": CONFIG})
    root = tmp_path / "port"
    write_layer(root, "npu", "up", {})
    write_one_upstream_port(root, up, pin)
    (root / "overlays/m").mkdir(parents=True)
    (root / "overlays/m/npu.py").write_text(OVERLAY)
    return OverlayPort(root, up, pin)


def states(run_out: str) -> dict[str, str]:
    data = json.loads(run_out)
    items = data["overlays"][0]["targets"] if "overlays" in data else data["targets"]
    return {t["target"]: t["state"] for t in items}


def test_fingerprint_then_holds(oport: OverlayPort) -> None:
    run = patchkit(oport.root, "overlay", "list", "m", "--json")
    assert run.code == 1
    assert set(states(run.out).values()) == {"unfingerprinted"}
    before = oport.overlay()
    run = patchkit(oport.root, "overlay", "fingerprint", "m")
    assert run.code == 0, run.text
    assert "m: 4 fingerprint(s) written, 0 already current" in run.out
    after = oport.overlay()
    values = re.findall(r'fingerprint="([0-9a-f]{16}-[0-9a-f]{8})"', after)
    assert len(values) == 4
    # only the fingerprint arguments were added
    assert re.sub(r', fingerprint="[0-9a-f-]+"', "", after) == before
    run = patchkit(oport.root, "overlay", "list", "m", "--json")
    assert run.code == 0, run.text
    assert set(states(run.out).values()) == {"holds"}
    assert patchkit(oport.root, "overlay", "fingerprint", "m").out.endswith("0 fingerprint(s) written, 4 already current\n")
    assert patchkit(oport.root, "rebase", "--check").code == 0


def test_one_overlay_result_type_and_each_command_keeps_its_json(oport: OverlayPort) -> None:
    """`overlay list|fingerprint` (the pinned code: `sources`) and `overlay check` / `rebase --check` (one
    upstream: `upstream`) report the one drift.OverlayResult, each with the keys it always wrote; a check
    document read back (shard.report_of, as `rebase --merge` does) gives the same results."""
    from patchkit import shard
    from patchkit.overlay.drift import OverlayResult

    listed = json.loads(patchkit(oport.root, "overlay", "list", "m", "--json").out)
    assert list(listed) == ["ok", "model", "sources", "targets", "files"] and list(listed["sources"]) == ["up"]
    assert list(json.loads(patchkit(oport.root, "overlay", "fingerprint", "m", "--json").out)) == list(listed)
    checked = json.loads(patchkit(oport.root, "overlay", "check", "m", "--json").out)
    assert [list(o) for o in checked["overlays"]] == [["model", "upstream", "variant", "target", "targets", "files"]]  # variant, target: issue 16
    doc = json.loads(patchkit(oport.root, "rebase", "--check", "--json").out)
    assert doc["overlays"] == checked["overlays"]
    back = shard.report_of(doc).overlays
    assert all(isinstance(o, OverlayResult) for o in back) and [o.as_json() for o in back] == doc["overlays"]
    assert back[0].ok and back[0].broken == 0 and back[0].upstream == "up"


def test_fingerprint_ignores_formatting_and_comments(oport: OverlayPort) -> None:
    assert patchkit(oport.root, "overlay", "fingerprint", "m").code == 0
    reformatted = CORE.replace("def f(x):\n    return x + 1\n",
                               "def f(x):\n    \"\"\"Add one.\"\"\"\n    # the classic\n    return (x +\n            1)\n")
    commit(oport.up, {"upkg/core.py": reformatted.replace('"""The core module."""', "# core")}, "reformat")
    run = patchkit(oport.root, "rebase", "--check", "--json")
    assert run.code == 0, run.text
    assert set(states(run.out).values()) == {"holds"}


def test_each_drift_outcome(oport: OverlayPort) -> None:
    assert patchkit(oport.root, "overlay", "fingerprint", "m").code == 0
    moved = (CORE.replace("    def m(self, y):\n        return y * 2\n", "    def m(self, y, scale=2):\n        return y * scale\n")
                 .replace("def f(x):\n    return x + 1\n", "def f(x):\n    return x + 2\n")
                 .replace("    @classmethod\n    def cm(cls):\n        return \"cm\"\n\n", ""))
    commit(oport.up, {"upkg/core.py": moved, "upkg/extra.py": "class C:\n    @classmethod\n    def cm(cls):\n        return 1\n"},
           "upstream moves things")
    run = patchkit(oport.root, "rebase", "--check", "--json")
    assert run.code == 1, run.text
    assert states(run.out) == {"upkg.core:f": "drifted", "upkg.core:C.m": "signature-changed",
                               "upkg.core:C.cm": "missing", "upkg.core:K": "holds"}
    table = patchkit(oport.root, "rebase", "--check").out
    assert "DRIFTED            upkg.core:f" in table and "-    return x + 1" in table and "+    return x + 2" in table
    assert "SIGNATURE-CHANGED  upkg.core:C.m" in table
    assert "upkg/core.py has no C.cm" in table and "a cm is defined at upkg/extra.py:3:" in table
    assert "overlays: 1 drifted, 1 signature-changed, 1 missing, 1 holds" in table
    check = patchkit(oport.root, "overlay", "check", "m")
    assert check.code == 1 and "m: overlays 3 broken" in check.out


def test_unknown_upstream_and_bad_declaration(oport: OverlayPort) -> None:
    (oport.root / "overlays/m/bad.py").write_text(
        "from patchkit.overlay import replace\nTARGET = 'x:y'\n@replace(TARGET, upstream='up')\ndef y(): pass\n")
    run = patchkit(oport.root, "overlay", "list", "m")
    assert run.code == 2 and "overlays/m/bad.py:3: replace(...) needs a literal target string" in run.err
    (oport.root / "overlays/m/bad.py").write_text(
        "from patchkit.overlay import replace\n@replace('x:y', upstream='mmcv')\ndef y(): pass\n")
    run = patchkit(oport.root, "overlay", "list", "m")
    assert run.code == 2 and "name upstreams the model does not have: mmcv" in run.err


def whole_file(oport: OverlayPort, ours: str) -> None:
    base = git(oport.up, "rev-parse", f"{oport.pin}:upkg/config.py")
    folder = oport.root / "overlays/m"
    (folder / "files/up/upkg").mkdir(parents=True)
    (folder / "files/up/upkg/config.py").write_text(ours)
    (folder / "files.yaml").write_text(f"files:\n  - upstream: up\n    path: upkg/config.py\n    base: {base}\n")


def test_whole_file_overlay_applied_as_one_commit(oport: OverlayPort) -> None:
    whole_file(oport, CONFIG.replace("setting_3 = 3", "setting_3 = 'npu'"))
    run = patchkit(oport.root, "apply", "m")
    assert run.code == 0, run.text
    repo = oport.root / "work/m/up"
    assert "setting_3 = 'npu'" in (repo / "upkg/config.py").read_text()
    assert git(repo, "log", "-1", "--format=%s") == "patchkit: whole-file overlays"
    assert patchkit(oport.root, "apply", "m").out.startswith("m: up to date")
    assert patchkit(oport.root, "export", "m", "--check").code == 0  # the overlay commit is not a patch
    (oport.root / "overlays/m/files/up/upkg/config.py").write_text(CONFIG.replace("setting_3 = 3", "setting_3 = 'npu:0'"))
    assert "stale" in patchkit(oport.root, "status", "m").out
    run = patchkit(oport.root, "apply", "m")
    assert run.code == 0 and "setting_3 = 'npu:0'" in (repo / "upkg/config.py").read_text()
    # `overlay list` reads the applied workspace without its overlay commit: the pin with the series
    listed = json.loads(patchkit(oport.root, "overlay", "list", "m", "--json").out)
    assert [f["state"] for f in listed["files"]] == ["holds"], listed["files"]


@pytest.mark.parametrize(("upstream_change", "expected"), [
    (("setting_18 = 18", "setting_18 = 180"), "merged"),
    (("setting_3 = 3", "setting_3 = 30"), "conflict"),
    (None, "holds"),
])
def test_whole_file_overlay_drift(oport: OverlayPort, upstream_change: tuple[str, str] | None, expected: str) -> None:
    whole_file(oport, CONFIG.replace("setting_3 = 3", "setting_3 = 'npu'"))
    assert patchkit(oport.root, "overlay", "fingerprint", "m").code == 0
    if upstream_change:
        commit(oport.up, {"upkg/config.py": CONFIG.replace(*upstream_change)}, "upstream edits config")
    run = patchkit(oport.root, "rebase", "--check", "--json")
    files = json.loads(run.out)["overlays"][0]["files"]
    assert [f["state"] for f in files] == [expected]
    assert run.code == (1 if expected == "conflict" else 0)
    if expected == "merged":
        assert "+setting_18 = 180" in files[0]["detail"]


def test_fingerprint_of_a_signature_with_defaults_and_annotations() -> None:
    """A signature such as `backend: str, **kwargs` is no statement of its own: it is hashed as a tree,
    never re-parsed from its text (which raised SyntaxError and made such targets look missing)."""
    from patchkit.overlay import fingerprint as fp

    src = ('class Loss:\n    def forward(self, pred, target, weight=None, *, avg: int = 3, **kw) -> int:\n'
           '        """doc"""\n        return 1\n\ndef init(backend: str, **kwargs) -> None:\n    pass\n')
    a = fp.of_source(src, "Loss.forward")
    assert a and a == fp.of_source(src.replace('"""doc"""', '"""other doc"""'), "Loss.forward")
    assert a.split("-")[1] != fp.of_source(src.replace("avg: int = 3", "avg: int = 4"), "Loss.forward").split("-")[1]
    assert fp.of_source(src, "init")


def _reference_fingerprint(nodes: list[ast.stmt]) -> str:
    """The fingerprint as first written (a deep copy of each node with its docstrings removed, then
    serialised): the in-place serialiser must give the very same bits."""
    import copy
    import hashlib

    from patchkit.overlay import fingerprint as fp

    def digest(items: list[ast.AST], size: int) -> str:
        out: list[str] = []
        for item in items:
            item = copy.deepcopy(item)
            for child in ast.walk(item):
                body = getattr(child, "body", None)
                if (isinstance(child, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                        and isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                        and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                    child.body = body[1:] or [ast.Pass()]
            fp._serialise(item, out)
        return hashlib.sha256("".join(out).encode()).hexdigest()[:size]

    return f"{digest(list(nodes), 16)}-{digest([s for n in nodes for s in fp._signature(n)], 8)}"


def test_fingerprints_bit_identical_without_copies() -> None:
    """Every definition and method of patchkit's overlay and train code and of the shipped overlays (docstrings,
    nested classes, decorators, a docstring-only body): the same fingerprint as the copying
    implementation, and the parsed module is left as it was (it is shared by all targets in it)."""
    from patchkit.overlay import fingerprint as fp

    root = Path(__file__).resolve().parent.parent
    sources = [p.read_text(encoding="utf-8") for folder in ("patchkit/overlay", "patchkit/train", "overlays")
               for p in sorted((root / folder).rglob("*.py"))]
    sources.append('class Only:\n    """only a docstring"""\n\n    def m(self):\n        """doc"""\n')
    checked = 0
    for source in sources:
        module = ast.parse(source)
        before = ast.dump(module)
        for node in module.body:
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else []
            if isinstance(node, ast.ClassDef):
                names += [f"{node.name}.{n.name}" for n in node.body
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            for name in names:
                assert fp.of_module(module, name) == _reference_fingerprint(fp.find(module, name)), name
                checked += 1
        assert ast.dump(module) == before
    assert checked > 150, checked
