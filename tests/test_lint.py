"""`patchkit validate` lints patch files: a DEP-3 Upstream-Status line, no cosmetic-only patches."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gitfixtures import PatchMaker, make_upstream, patchkit, write_layer, write_one_upstream_port

PY = "def f(x):\n    # double it\n    return x * 2\n\n\nURL = 'http://example.org/#top'\n"
CPP = ("#include <cstdio>\n\n/*\n * Add one.\n */\nint add(int a) {\n    // plus one\n"
       "    return a + 1;  // done\n}\n")
FILES = {"lib/core.py": PY, "src/kernel.cpp": CPP, "CMakeLists.txt": "project(k)  # the kernel\n"}
COSMETIC = "only changes whitespace or comments"
NO_STATUS = "no Upstream-Status: line (DEP-3: Pending, Submitted, Backport, Denied or Inappropriate)"
WHERE = "patches/npu/up/0001-p.patch"


@pytest.fixture
def maker(tmp_path: Path) -> PatchMaker:
    pin = make_upstream(tmp_path / "up", FILES)
    write_one_upstream_port(tmp_path / "port", tmp_path / "up", pin)
    return PatchMaker(tmp_path / "up", pin, tmp_path / "scratch")


def validate(tmp_path: Path, data: bytes) -> tuple[int, str]:
    write_layer(tmp_path / "port", "npu", "up", {"0001-p.patch": data})
    run = patchkit(tmp_path / "port", "validate")
    assert "Traceback" not in run.text
    return run.code, run.err


def line_of(data: bytes, prefix: str) -> int:
    return next(n for n, line in enumerate(data.decode().splitlines(), 1) if line.startswith(prefix))


def test_missing_upstream_status_is_an_error(tmp_path: Path, maker: PatchMaker) -> None:
    data = maker.patch("lib: triple", {"lib/core.py": PY.replace("x * 2", "x * 3")}, body="")
    code, err = validate(tmp_path, data)
    assert code == 2
    assert f"{WHERE}:{line_of(data, 'Subject:')}: {NO_STATUS}" in err
    assert COSMETIC not in err


def test_upstream_status_in_the_diff_does_not_count(tmp_path: Path, maker: PatchMaker) -> None:
    data = maker.patch("docs", {"lib/core.py": PY + "DOC = '''\nUpstream-Status: Pending\n'''\n"}, body="")
    code, err = validate(tmp_path, data)
    assert code == 2 and NO_STATUS in err


def test_invalid_value_reported_at_its_line(tmp_path: Path, maker: PatchMaker) -> None:
    data = maker.patch("lib: triple", {"lib/core.py": PY.replace("x * 2", "x * 3")},
                       body="Why: speed.\n\nUpstream-Status: Maybe")
    code, err = validate(tmp_path, data)
    assert code == 2
    assert f"{WHERE}:{line_of(data, 'Upstream-Status:')}: Upstream-Status: 'Maybe' is not a DEP-3 value (" in err
    assert NO_STATUS not in err


@pytest.mark.parametrize("status", ["Pending", "Submitted [https://github.com/x/y/pull/1]", "Backport [abc123]",
                                    "Denied", "Inappropriate [NPU only]"])
def test_dep3_values_accepted(tmp_path: Path, maker: PatchMaker, status: str) -> None:
    data = maker.patch("lib: triple", {"lib/core.py": PY.replace("x * 2", "x * 3")},
                       body=f"Upstream-Status: {status}")
    code, err = validate(tmp_path, data)
    assert (code, err) == (0, "")


@pytest.mark.parametrize("status", ["pending", "Not-Needed", "Submitted https://x/y", ""])
def test_other_values_refused(tmp_path: Path, maker: PatchMaker, status: str) -> None:
    data = maker.patch("s", {"lib/core.py": PY.replace("x * 2", "x * 3")}, body=f"Upstream-Status: {status}")
    code, err = validate(tmp_path, data)
    assert code == 2 and f"Upstream-Status: {status!r} is not a DEP-3 value" in err


@pytest.mark.parametrize(("path", "new"), [
    ("lib/core.py", PY.replace("    return", "\treturn").replace("\n\n\nURL", "\nURL")),  # whitespace only
    ("lib/core.py", PY.replace("# double it", "# twice x") + "# trailing note\n"),  # Python comments
    ("CMakeLists.txt", "project(k) # kernel\n"),
    ("src/kernel.cpp", CPP.replace("Add one.", "Add one to a.").replace("// done", "/* done */")
     .replace("// plus one", "// plus\n    // one")),  # C++ comments
])
def test_cosmetic_patch_flagged(tmp_path: Path, maker: PatchMaker, path: str, new: str) -> None:
    data = maker.patch("tidy", {path: new})
    code, err = validate(tmp_path, data)
    assert code == 2
    assert f"{WHERE}: {COSMETIC} (cosmetic hunks are conflicts waiting to happen)" in err


@pytest.mark.parametrize(("files", "remove"), [
    ({"lib/core.py": PY.replace("# double it", "# triple it").replace("x * 2", "x * 3")}, ()),  # code + comment
    ({"lib/core.py": PY.replace("/#top", "/#bottom")}, ()),  # a '#' inside a string is not a comment
    ({"src/kernel.cpp": CPP.replace("    return a + 1;", "    /* return a + 1; */\n    return a;")}, ()),
    ({"src/kernel.cpp": CPP.replace("return a + 1;", "return a + 2;").replace("plus one", "plus two")}, ()),
    ({"lib/notes.py": "# only a comment\n"}, ()),  # a new file
    ({}, ("CMakeLists.txt",)),  # a deleted file
    ({"lib/core.py": PY.replace("# double it", "# x2"), "lib/util.py": "# note\n"}, ()),  # cosmetic + new file
])
def test_real_changes_not_flagged(tmp_path: Path, maker: PatchMaker, files: dict[str, str],
                                  remove: tuple[str, ...]) -> None:
    data = maker.patch("change", files, remove=remove)
    assert validate(tmp_path, data) == (0, "")


def test_lint_is_not_run_by_apply(tmp_path: Path, maker: PatchMaker) -> None:
    data = maker.patch("tidy", {"lib/core.py": PY.replace("# double it", "# twice")}, body="")
    write_layer(tmp_path / "port", "npu", "up", {"0001-p.patch": data})
    run = patchkit(tmp_path / "port", "apply", "m")
    assert run.code == 0, run.text
    assert "Upstream-Status" not in run.text and COSMETIC not in run.text


@pytest.mark.parametrize(("new", "flagged"), [(PY.replace("# double it", "# twice"), True),
                                              (PY.replace("x * 2", "x * 3"), False)])
def test_crlf_patch_file(tmp_path: Path, maker: PatchMaker, new: str, flagged: bool) -> None:
    data = maker.patch("crlf", {"lib/core.py": new}).replace(b"\n", b"\r\n")
    code, err = validate(tmp_path, data)
    assert (code, COSMETIC in err) == ((2, True) if flagged else (0, False)), err


def test_build_output_in_a_patch_is_named_at_its_diff_line(tmp_path: Path, maker: PatchMaker) -> None:
    """A compiled file that slipped into a format-patch (a shipped patch once carried a .pyc) is refused."""
    data = maker.patch("lib: triple", {"lib/core.py": PY.replace("x * 2", "x * 3"),
                                       "lib/__pycache__/core.cpython-311.pyc": "not really bytecode\n"},
                       body="Why: speed.\n\nUpstream-Status: Pending")
    code, err = validate(tmp_path, data)
    assert code == 2
    line = line_of(data, "diff --git a/lib/__pycache__/")
    assert f"{WHERE}:{line}: lib/__pycache__/core.cpython-311.pyc: a build output, not source" in err
    assert "lib/core.py: a build output" not in err
