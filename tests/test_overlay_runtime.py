"""patchkit.overlay.runtime: overlays applied to a synthetic upstream package, now and on import."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pickle
import subprocess
import sys
import textwrap
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

from patchkit.overlay import api, original
from patchkit.overlay import runtime
from patchkit.overlay.runtime import OverlayError, activate, activate_from_env, deactivate, report

UPKG = {
    "upkg/__init__.py": "",
    "upkg/core.py": """\
        SCALE = 2


        def f():
            return 1


        def helper(x):
            return x * SCALE


        class Klass:
            def __init__(self, v=10):
                self.v = v

            def method(self):
                return self.v

            @classmethod
            def create(cls):
                return cls(20)

            @staticmethod
            def static(x):
                return x + 1

            @property
            def double(self):
                return self.v * 2


        class Sub(Klass):
            pass


        class Other:
            name = "other"
        """,
    "upkg/user.py": """\
        from upkg.core import Other, f


        def call():
            return f()
        """,
    "upkg/late.py": """\
        def g():
            return "late"
        """,
}

KINDS = '''\
from patchkit.overlay import original, replace, replace_value


@replace("upkg.core:f", upstream="upkg")
def f():
    return original(f)() + 100


replace_value("upkg.core:SCALE", 3, upstream="upkg")


@replace("upkg.core:Klass.method", upstream="upkg")
def method(self):
    return original(method)(self) + 1


@replace("upkg.core:Klass.create", upstream="upkg")
def create(cls):
    obj = original(create)(cls)
    obj.v += 5
    return obj


@replace("upkg.core:Klass.static", upstream="upkg")
def static(x):
    return original(static)(x) * 10


@replace("upkg.core:Klass.double", upstream="upkg")
def double(self):
    return original(double).fget(self) + 1000


@replace("upkg.core:Other", upstream="upkg")
class Other:
    name = "replaced"
'''

LATE = '''\
from patchkit.overlay import original, replace


@replace("upkg.late:g", upstream="upkg")
def g():
    return "patched " + original(g)()
'''


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The synthetic upstream on sys.path; afterwards no overlay, no upkg, no overlay module left."""
    write(tmp_path / "src", UPKG)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield tmp_path
    deactivate()
    for name in list(sys.modules):
        if name == "upkg" or name.startswith(("upkg.", "patchkit_overlays")):
            del sys.modules[name]


def overlays(root: Path, name: str = "set1", **files: str) -> Path:
    folder = root / "overlays" / name
    folder.mkdir(parents=True, exist_ok=True)
    for stem, text in files.items():
        (folder / f"{stem}.py").write_text(text)
    return folder


def by_target(rep: runtime.ActivationReport) -> dict[str, runtime.Entry]:
    return {e.target: e for e in rep.entries}


def test_every_kind_replaced_in_imported_modules_with_aliases(root: Path) -> None:
    import upkg.core as core
    import upkg.user as user

    upstream_f, upstream_other, upstream_double = core.f, core.Other, core.Klass.__dict__["double"]
    folder = overlays(root, a_kinds=KINDS, b_late=LATE, _private="raise RuntimeError('not an overlay')\n")
    rep = activate("demo", dirs=[folder])

    assert core.f() == 101 and core.helper(2) == 6
    k = core.Klass()
    assert k.method() == 11 and k.double == 1020
    assert core.Klass.create().v == 25 and isinstance(core.Klass.create(), core.Klass)
    assert core.Klass.static(1) == 20 and k.static(1) == 20
    assert core.Other.name == "replaced"
    # the replacement itself is installed: nothing wraps it
    overlay = sys.modules["patchkit_overlays.set1.a_kinds"]
    assert core.f is overlay.f and core.Klass.__dict__["method"] is overlay.method
    assert core.Klass.__dict__["create"].__func__ is overlay.create
    assert core.Klass.__dict__["static"].__func__ is overlay.static
    assert core.Klass.__dict__["double"].fget is overlay.double
    assert original(overlay.f) is upstream_f and original(overlay.Other) is upstream_other
    assert original(overlay.double) is upstream_double
    # `from upkg.core import f, Other` in an already-imported module
    assert user.f is overlay.f and user.call() == 101 and user.Other is overlay.Other

    assert rep.model == "demo" and rep.strict
    kinds = {t: (e.status, e.kind) for t, e in by_target(rep).items()}
    assert kinds == {
        "upkg.core:f": ("applied", "function"), "upkg.core:SCALE": ("applied", "attribute"),
        "upkg.core:Klass.method": ("applied", "method"), "upkg.core:Klass.create": ("applied", "classmethod"),
        "upkg.core:Klass.static": ("applied", "staticmethod"), "upkg.core:Klass.double": ("applied", "property"),
        "upkg.core:Other": ("applied", "class"), "upkg.late:g": ("pending", None),
    }
    assert by_target(rep)["upkg.core:f"].file == str((folder / "a_kinds.py").resolve())
    assert by_target(rep)["upkg.core:f"].line == 4
    assert "+1 alias" in by_target(rep)["upkg.core:f"].detail
    assert rep.lines()[-1].startswith("overlays: 7 applied, 1 pending, 0 missing in ")
    assert len(rep.lines()) == 9
    # pickle finds overlay objects by their module name
    assert pickle.loads(pickle.dumps(overlay.f)) is overlay.f


def test_module_imported_after_activation_is_patched_by_the_hook(root: Path) -> None:
    rep = activate(dirs=[overlays(root, a_kinds=KINDS, b_late=LATE)])
    assert {e.status for e in rep.entries} == {"pending"}
    assert "upkg" not in sys.modules

    import upkg.late
    import upkg.user

    assert upkg.late.g() == "patched late"
    assert upkg.user.call() == 101 and upkg.user.Other.name == "replaced"
    assert upkg.core.Klass.create().v == 25
    assert {e.status for e in rep.entries} == {"applied"}  # the report is live
    assert report().lines()[-1].startswith("overlays: 8 applied, 0 pending, 0 missing")
    # the hooked loader is still a source loader with everything a loader has
    assert isinstance(upkg.late.__loader__, SourceFileLoader)
    assert "def g" in inspect.getsource(upkg.late)
    assert upkg.late.__spec__.loader.is_package("upkg.late") is False
    # one hook, however many activations
    activate(dirs=[overlays(root, "set2", c=LATE.replace("upkg.late:g", "upkg.late2:g"))])
    assert sum(isinstance(f, runtime._OverlayFinder) for f in sys.meta_path) == 1


def test_submodule_target_waits_for_the_submodule(root: Path) -> None:
    import upkg  # the package is imported, upkg.late is not

    activate(dirs=[overlays(root, b_late=LATE)])
    assert report().entries[0].status == "pending" and "upkg.late" not in sys.modules
    importlib.import_module("upkg.late")
    assert upkg.late.g() == "patched late" and report().entries[0].status == "applied"


def test_strict_missing_target_names_file_line_and_what_is_missing(root: Path) -> None:
    import upkg.core as core

    upstream_f = core.f
    folder = overlays(root, a_kinds=KINDS, z_bad=(
        "from patchkit.overlay import replace\n\n\n"
        "@replace('upkg.core:Klass.nope', upstream='upkg')\n"
        "def nope(self):\n    return 0\n"))
    with pytest.raises(OverlayError) as err:
        activate(dirs=[folder])
    message = str(err.value)
    assert "upkg.core:Klass.nope" in message and "upkg.core:Klass has no attribute 'nope'" in message
    assert f"{(folder / 'z_bad.py').resolve()}:4" in message
    # nothing of the failed activation stays: not a_kinds.py either
    assert core.f is upstream_f and report().entries == [] and api.declarations() == []
    assert "patchkit_overlays.set1.a_kinds" not in sys.modules


def test_strict_missing_target_in_a_later_import_fails_that_import(root: Path) -> None:
    activate(dirs=[overlays(root, bad="from patchkit.overlay import replace\n\n"
                                      "@replace('upkg.late:gone', upstream='upkg')\n"
                                      "def gone():\n    return 0\n")])
    with pytest.raises(OverlayError, match=r"upkg.late has no attribute 'gone'"):
        import upkg.late  # noqa: F401
    assert "upkg.late" not in sys.modules
    assert report().entries[0].status == "missing"


def test_lax_missing_target_is_reported_and_the_rest_applied(root: Path) -> None:
    import upkg.core as core

    folder = overlays(root, a_kinds=KINDS, z_bad=(
        "from patchkit.overlay import replace\n\n"
        "@replace('upkg.nothere.core:Klass.nope', upstream='upkg')\n"
        "def a():\n    return 0\n\n"
        "@replace('upkg.core:Nope.method', upstream='upkg')\n"
        "def b():\n    return 0\n"))
    rep = activate(dirs=[folder], strict=False)
    assert core.f() == 101
    entries = by_target(rep)
    assert entries["upkg.core:Nope.method"].status == "missing"
    assert entries["upkg.core:Nope.method"].detail == "upkg.core has no attribute 'Nope'"
    assert entries["upkg.nothere.core:Klass.nope"].status == "pending"  # never imported
    assert rep.lines()[-1].startswith("overlays: 7 applied, 1 pending, 1 missing")
    assert any(line.startswith("missing") and "Nope.method" in line for line in rep.lines())


def test_activate_twice_loads_and_patches_once(root: Path) -> None:
    import upkg.core as core

    upstream_f, upstream_create = core.f, core.Klass.__dict__["create"].__func__
    folder = overlays(root, a_kinds=KINDS)
    first = activate(dirs=[folder])
    replaced, declared = core.f, api.declarations()
    again = activate(dirs=[str(folder / ".." / "set1")])  # the same files, another spelling
    assert core.f is replaced and api.declarations() == declared
    assert core.f() == 101 and core.Klass().method() == 11 and core.Klass.create().v == 25
    assert original(core.f) is upstream_f
    assert original(core.Klass.__dict__["create"].__func__) is upstream_create
    assert [(e.target, e.status) for e in again.entries] == [(e.target, e.status) for e in first.entries]


def test_deactivate_restores_everything(root: Path) -> None:
    import upkg.core as core
    import upkg.user as user

    before = dict(core.Klass.__dict__), dict(vars(core)), dict(vars(user))
    inherited = "from patchkit.overlay import replace\n\n" \
                "@replace('upkg.core:Sub.method', upstream='upkg')\ndef method(self):\n    return -1\n"
    activate(dirs=[overlays(root, a_kinds=KINDS, b_late=LATE, c_sub=inherited)])
    import upkg.late as late

    upstream_g = late.__dict__["g"]
    assert core.Sub().method() == -1 and late.g() == "patched late"
    deactivate()
    assert dict(core.Klass.__dict__) == before[0] and "method" not in core.Sub.__dict__
    assert {k: v for k, v in vars(core).items()} == before[1] and dict(vars(user)) == before[2]
    assert late.g is not upstream_g and late.g() == "late"
    assert core.f() == 1 and core.Klass().method() == 10 and core.Klass().double == 20
    assert not any(isinstance(f, runtime._OverlayFinder) for f in sys.meta_path)
    assert api.declarations() == [] and report().entries == []
    assert not any(name.startswith("patchkit_overlays") for name in sys.modules)
    with pytest.raises(LookupError):
        original(late.g)
    # and it can be activated again
    activate(dirs=[overlays(root, a_kinds=KINDS)])
    assert core.f() == 101


def test_broken_overlay_file_is_an_error_and_leaves_nothing(root: Path) -> None:
    folder = overlays(root, a_kinds=KINDS, b_broken="from patchkit.overlay import replace\nraise ValueError('boom')\n")
    with pytest.raises(OverlayError, match=r"b_broken.py failed to load: ValueError: boom"):
        activate(dirs=[folder])
    assert api.declarations() == [] and report().entries == []


def test_no_folders_is_an_error(root: Path) -> None:
    with pytest.raises(OverlayError, match="set PATCHKIT_OVERLAYS or pass dirs"):
        activate("demo")
    with pytest.raises(OverlayError, match="does not exist"):
        activate(dirs=[root / "nowhere"])


def test_activate_from_env(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert activate_from_env() is None
    set1 = overlays(root, a_kinds=KINDS)
    set2 = overlays(root, "set2", bad="from patchkit.overlay import replace\n\n"
                                      "@replace('upkg.core:gone', upstream='upkg')\ndef gone():\n    return 0\n")
    log = root / "overlays.log"
    monkeypatch.setenv("PATCHKIT_OVERLAYS", f"{set1}{os.pathsep}{set2}")
    monkeypatch.setenv("PATCHKIT_OVERLAY_LOG", str(log))
    monkeypatch.setenv("PATCHKIT_OVERLAY_STRICT", "0")
    import upkg.core as core

    rep = activate_from_env()
    assert rep is not None and not rep.strict and core.f() == 101
    assert by_target(rep)["upkg.core:gone"].status == "missing"
    text = log.read_text()
    assert f"pid {os.getpid()}" in text and "overlays: 7 applied, 0 pending, 1 missing in" in text

    deactivate()
    monkeypatch.delenv("PATCHKIT_OVERLAY_STRICT")
    with pytest.raises(OverlayError, match="upkg.core has no attribute 'gone'"):
        activate_from_env()


def test_fresh_process_patches_on_import(root: Path) -> None:
    folder = overlays(root, a_kinds=KINDS)
    env = {**os.environ, "PATCHKIT_OVERLAYS": str(folder),
           "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    code = "from patchkit.overlay.runtime import activate_from_env; activate_from_env(); import upkg.core; print(upkg.core.f())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "101"


def test_namespace_package_target_stays_pending_and_imports(root: Path) -> None:
    (root / "src" / "upkg_ns").mkdir()  # no __init__.py: a namespace package, no loader to hook
    rep = activate(dirs=[overlays(root, ns="from patchkit.overlay import replace_value\n\n"
                                       "replace_value('upkg_ns:VALUE', 1, upstream='upkg')\n")])
    import upkg_ns

    assert upkg_ns.__path__ and rep.entries[0].status == "pending"
    assert "namespace package" in rep.entries[0].detail


def test_a_loader_that_cannot_be_copied_is_proxied(root: Path) -> None:
    class SlottedLoader:  # an instance attribute cannot shadow exec_module
        __slots__ = ("ran",)

        def __init__(self) -> None:
            self.ran = False

        def create_module(self, spec):  # type: ignore[no-untyped-def]
            return None

        def exec_module(self, module):  # type: ignore[no-untyped-def]
            self.ran = True
            module.value = 1

        def is_package(self, name: str) -> bool:
            return False

    from importlib.machinery import ModuleSpec

    activate(dirs=[overlays(root, v="from patchkit.overlay import replace_value\n\n"
                                     "replace_value('upkg_slotted:value', 2, upstream='upkg')\n")])
    loader = SlottedLoader()
    spec = ModuleSpec("upkg_slotted", loader)  # type: ignore[arg-type]
    assert runtime._wrap_loader(spec, "upkg_slotted")
    assert isinstance(spec.loader, runtime._LoaderProxy) and spec.loader.is_package("upkg_slotted") is False
    module = importlib.util.module_from_spec(spec)
    sys.modules["upkg_slotted"] = module
    try:
        spec.loader.exec_module(module)
        assert loader.ran and module.value == 2 and report().entries[0].status == "applied"
    finally:
        del sys.modules["upkg_slotted"]


def test_activate_by_model_name_from_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """activate(MODEL) finds the model's overlay sets through upstreams.yaml."""
    from patchkit.overlay import runtime

    port = tmp_path / "port"
    (port / "overlays" / "m").mkdir(parents=True)
    (port / "overlays" / "m" / "x.py").write_text("X = 1\n")
    (port / "upstreams.yaml").write_text(f"upstreams:\n  up:\n    url: /nowhere\n    pin: {'a' * 40}\n"
                                         "    track: main\nmodels:\n  m:\n    upstreams:\n      up:\n")
    monkeypatch.setenv("PATCHKIT_MANIFEST", str(port / "upstreams.yaml"))
    assert runtime.model_dirs("m") == [str(port / "overlays" / "m")]
    with pytest.raises(runtime.OverlayError, match="unknown model 'nope'"):
        runtime.model_dirs("nope")
