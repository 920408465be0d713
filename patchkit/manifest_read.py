"""Reading `upstreams.yaml` (its format: patchkit.manifest) into a Manifest, node by node with PyYAML's
composer, so every problem is reported with its line and all problems are collected before anything is
raised. Imported only where a manifest is read from its text (not when the cache's memo has it).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from patchkit import series as series_mod
from patchkit.errors import Diagnostic
from patchkit.manifest import (DEVICES, INSTALL_BUILDS, INSTALL_KEYS, READABLE_VERSIONS, TOOLCHAIN_KEYS, Manifest,
                               Model, Series, SeriesFile, Toolchain, Upstream, Variant, series_dir)
from patchkit.paths import display
from patchkit.yamlcheck import Checker, name_problem, short

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+!_-]*$")


@dataclass
class _Use:
    """One upstream of a model as read: its layers (with their nodes), and the long form's pin and track."""

    layers: list[tuple[str, yaml.Node]]
    pin: str | None = None
    track: str | None = None
    pin_line: int = 0


class Reader(Checker):
    """Reads upstreams.yaml node by node: the Manifest, every problem with its line, and `reads`, what it
    found in other files (see patchkit.manifest.load's memo)."""

    def __init__(self, path: Path, where: str) -> None:
        super().__init__(path, where)
        # (kind, path, what was found): file, is_file, is_dir; ("is_files", folder, names a line, True)
        self.reads: list[tuple[str, str, str | bool] | tuple[str, str, str, bool]] = []
        self._series: dict[tuple[str, str], SeriesFile | None] = {}  # a shared layer is read once
        self._broken: set[str] = set()  # upstreams declared with an error already reported
        self._v1_line = 0  # the line of an explicit `version: 1`: version-2 forms are refused then

    # -- the schema -----------------------------------------------------------------------

    def check(self, text: str) -> Manifest | None:
        root = self.compose(text)
        if root is None and self.problems:
            return None
        if root is None:
            self.problems.append(Diagnostic(self.where, 1, "the manifest is empty (expected 'upstreams:' and 'models:')"))
            return None
        top = self.mapping(root, "top level", ("version", "upstreams", "models", "toolchain"))
        if not isinstance(root, yaml.MappingNode):
            return None
        if "version" in top:
            node = top["version"][1]
            if not (isinstance(node, yaml.ScalarNode) and node.value in READABLE_VERSIONS):
                self.error(node, f"unsupported manifest version {getattr(node, 'value', '?')!r} "
                           f"(this patchkit reads versions {', '.join(READABLE_VERSIONS)})")
            elif node.value == "1":
                self._v1_line = node.start_mark.line + 1
        upstreams: dict[str, Upstream] = {}
        node = self.required(top, "upstreams", root, "top level")
        if node is not None:
            upstreams = self.upstreams(node)
        models: dict[str, Model] = {}
        node = self.required(top, "models", root, "top level")
        if node is not None:
            models = self.models(node, upstreams)
        toolchain = self.toolchain(top["toolchain"][1]) if "toolchain" in top else {}
        return Manifest(self.path, upstreams, models, toolchain)

    def toolchain(self, node: yaml.Node) -> dict[str, Toolchain]:
        result: dict[str, Toolchain] = {}
        for device, (knode, value) in self.mapping(node, "toolchain", DEVICES).items():
            what = f"toolchain: {device}"
            fields = self.mapping(value, what, TOOLCHAIN_KEYS)
            versions = {key: self.exact(fields[key][1], f"{what}: {key}") if key in fields else None
                        for key in ("torch", "torchvision", "torch_npu")}
            if isinstance(value, yaml.MappingNode):
                self.required(fields, "torch", knode, what)
            tools = tuple(v for v, _ in self.strings(fields["tools"][1], f"{what}: tools", unique=True)) \
                if "tools" in fields else ()
            pip_args = tuple(v for v, _ in self.strings(fields["pip_args"][1], f"{what}: pip_args")) \
                if "pip_args" in fields else ()
            torch = versions["torch"]
            if torch:
                result[device] = Toolchain(device, knode.start_mark.line + 1, torch, versions["torchvision"],
                                           versions["torch_npu"], tools, pip_args)
        return result

    def upstreams(self, node: yaml.Node) -> dict[str, Upstream]:
        result: dict[str, Upstream] = {}
        for key, (knode, value) in self.mapping(node, "upstreams", ()).items():
            self._broken.add(key)  # until it is read whole
            name = self.name(knode, "upstream")
            what = f"upstream {key!r}"
            fields = self.mapping(value, what, ("url", "pypi", "sha256", "pin", "track", "exclude", "install"))
            if not isinstance(value, yaml.MappingNode):
                continue
            if ("url" in fields) == ("pypi" in fields):
                self.error(knode, f"{what}: give either url (a git repository) or pypi (a release, name==version)")
                continue
            source = "url" if "url" in fields else "pypi"
            got: dict[str, str | None] = {}
            for field_name in (source, "pin", "track") + (("sha256",) if source == "pypi" else ()):
                if field_name == "pin" and source == "pypi" and "pin" not in fields:
                    got["pin"] = ""  # computed from the release by `patchkit pin NAME`
                    continue
                fnode = self.required(fields, field_name, knode, what)
                got[field_name] = self.string(fnode, f"{what}: {field_name}") if fnode is not None else None
            pin = got["pin"]
            if pin and not _SHA_RE.match(pin):
                hint = " (run `patchkit pin NAME` to compute it)" if source == "pypi" else \
                    " (pin commits, not branches or tags; lower-case hex)"
                self.error(fields["pin"][1], f"{what}: pin {pin!r} is not a full 40-hex commit SHA{hint}")
                pin = None
            pypi = got.get("pypi")
            if pypi is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9._+!-]+", pypi):
                self.error(fields["pypi"][1], f"{what}: pypi {pypi!r} is not NAME==VERSION")
                pypi = None
            sha = got.get("sha256")
            if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
                self.error(fields["sha256"][1], f"{what}: sha256 {sha!r} is not 64 lower-case hex digits")
            exclude = self.patterns(fields["exclude"][1], what) if "exclude" in fields else ()
            install = self.install(fields["install"][1], what) if "install" in fields else None
            url = got.get("url") or (f"pypi:{pypi}" if pypi else None)
            if name and url and pin is not None and got["track"] and (pin or source == "pypi") \
                    and (source == "url" or (pypi and sha)):
                pin_line = fields["pin"][1].start_mark.line + 1 if "pin" in fields else 0
                result[name] = Upstream(name, url, pin, got["track"], knode.start_mark.line + 1,
                                        pin_line, exclude, pypi, sha, install)
                self._broken.discard(key)
        return result

    def exact(self, node: yaml.Node, what: str) -> str | None:
        text = self.string(node, what)
        if text is not None and not _VERSION_RE.match(text):
            self.error(node, f"{what}: {text!r} is not an exact version (say \"2.13.0\", not a range)")
            return None
        return text

    def patterns(self, node: yaml.Node, what: str) -> tuple[str, ...]:
        out = []
        for value, item in self.strings(node, f"{what}: exclude", unique=True):
            if value.startswith("!") or ".." in value.split("/"):
                self.error(item, f"{what}: exclude pattern {value!r} must name paths to leave out")
            else:
                out.append(value)
        return tuple(out)

    def install(self, node: yaml.Node, what: str) -> dict[str, object]:
        """An `install:` mapping (see patchkit.install) as plain data."""
        fields = self.mapping(node, f"{what}: install", INSTALL_KEYS)
        recipe: dict[str, object] = {"build": "wheel"}
        if "build" in fields:
            build = self.string(fields["build"][1], f"{what}: install: build")
            if build not in INSTALL_BUILDS:
                self.error(fields["build"][1], f"{what}: install: build must be one of {', '.join(INSTALL_BUILDS)}")
            recipe["build"] = build
        for key in ("after", "constraints", "pip_args", "requires"):
            if key in fields:
                recipe[key] = [v for v, _ in self.strings(fields[key][1], f"{what}: install: {key}",
                                                          unique=key == "after")]
        for key in ("env", "npu_env"):
            if key in fields:
                env = {}
                for name, (_, value) in self.mapping(fields[key][1], f"{what}: install: {key}", ()).items():
                    text = self.string(value, f"{what}: install: {key}: {name}")
                    if text is not None:
                        env[name] = text
                recipe[key] = env
        if "command" in fields:
            recipe["command"] = self.string(fields["command"][1], f"{what}: install: command")
        if recipe["build"] == "command" and not recipe.get("command"):
            self.error(node, f"{what}: install: build: command needs a command")
        return recipe

    def models(self, node: yaml.Node, upstreams: dict[str, Upstream]) -> dict[str, Model]:
        result: dict[str, Model] = {}
        for key, (knode, value) in self.mapping(node, "models", ()).items():
            name = self.name(knode, "model")
            model = self.model(key, knode, value, upstreams)
            if name:
                result[name] = model
        return result

    def model(self, key: str, knode: yaml.Node, value: yaml.Node, upstreams: dict[str, Upstream]) -> Model:
        what = f"model {key!r}"
        fields = self.mapping(value, what, ("description", "upstreams", "overlays", "variants"))
        description = self.string(fields["description"][1], f"{what}: description") or "" \
            if "description" in fields else ""
        layers_node = self.required(fields, "upstreams", knode, what) if isinstance(value, yaml.MappingNode) else None
        uses = self.uses(layers_node, what, upstreams) if layers_node is not None else {}
        layers = {up: tuple(n for n, _ in use.layers) for up, use in uses.items()}
        patches = {up: self.series_of(up, use.layers) for up, use in uses.items()}
        overlays = self.overlay_sets(fields["overlays"][1], what) if "overlays" in fields else (
            (key,) if self._is("is_dir", self.path.parent / "overlays" / key) else ())
        variants: dict[str, Variant] = {}
        if "variants" in fields:
            self.needs_v2(fields["variants"][0], f"{what}: variants")
            variants = self.variants(fields["variants"][1], what, uses, overlays)
        pins = {up: use.pin for up, use in uses.items() if use.pin}
        tracks = {up: use.track for up, use in uses.items() if use.track}
        pin_lines = {up: use.pin_line for up, use in uses.items() if use.pin}
        return Model(key, knode.start_mark.line + 1, description, layers, patches, overlays, pins, tracks,
                     pin_lines, variants)

    def series_of(self, up: str, names: list[tuple[str, yaml.Node]]) -> Series:
        return Series(tuple(f for f in (self.layer_series(name, up, node) for name, node in names) if f is not None))

    def uses(self, node: yaml.Node, what: str, upstreams: dict[str, Upstream]) -> dict[str, _Use]:
        """The model's upstreams: each one's layers, and in the long form its own pin and track."""
        result: dict[str, _Use] = {}
        for up, (unode, lnode) in self.mapping(node, f"{what}: upstreams", ()).items():
            if up in self._broken:
                continue  # its own error is reported; no second one here
            if up not in upstreams:
                hint = f" (declared: {', '.join(sorted(upstreams))})" if upstreams else ""
                self.error(unode, f"{what} names unknown upstream {up!r}{hint}")
                continue
            if isinstance(lnode, yaml.MappingNode):
                result[up] = self.long_form(up, unode, lnode, what, upstreams[up])
            else:
                result[up] = _Use(self.layer_list(lnode, f"{what}: layers of {up!r}"))
        return result

    def long_form(self, up: str, unode: yaml.Node, node: yaml.Node, what: str, upstream: Upstream) -> _Use:
        """`up: {pin:, track:, layers: [...]}`: this model's own base of UP."""
        where = f"{what}: upstream {up!r}"
        self.needs_v2(unode, f"{where}: the long form ({{pin, track, layers}})")
        fields = self.mapping(node, where, ("pin", "track", "layers"))
        layers_node = self.required(fields, "layers", unode, where)
        use = _Use(self.layer_list(layers_node, f"{what}: layers of {up!r}") if layers_node is not None else [])
        if "track" in fields:
            use.track = self.string(fields["track"][1], f"{where}: track")
        if "pin" in fields:
            use.pin = self.model_pin(fields["pin"][1], where, upstream)
            use.pin_line = fields["pin"][1].start_mark.line + 1
        return use

    def model_pin(self, node: yaml.Node, where: str, upstream: Upstream) -> str | None:
        pin = self.string(node, f"{where}: pin")
        if pin and not _SHA_RE.match(pin):
            self.error(node, f"{where}: pin {pin!r} is not a full 40-hex commit SHA "
                       "(pin commits, not branches or tags; lower-case hex)")
            return None
        if pin and upstream.kind == "pypi":
            self.error(node, f"{where}: {upstream.name!r} is a PyPI release, whose pin is the release itself; "
                       "for another release declare another upstream (pypi: NAME==VERSION)")
            return None
        return pin

    def needs_v2(self, node: yaml.Node, what: str) -> None:
        if self._v1_line:
            self.error(node, f"{what} needs `version: 2` (line {self._v1_line} says version 1)")

    def variants(self, node: yaml.Node, what: str, uses: dict[str, _Use],
                 overlays: tuple[str, ...]) -> dict[str, Variant]:
        result: dict[str, Variant] = {}
        for key, (knode, value) in self.mapping(node, f"{what}: variants", ()).items():
            name = self.name(knode, "variant")
            variant = self.variant(key, knode, value, f"{what}: variant {key!r}", uses, overlays)
            if name:
                result[name] = variant
        return result

    def variant(self, key: str, knode: yaml.Node, value: yaml.Node, what: str, uses: dict[str, _Use],
                overlays: tuple[str, ...]) -> Variant:
        keys = ("description", "upstreams", "overlays", "requires")
        is_null = isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null"
        fields = {} if is_null else self.mapping(value, what, keys)
        description = self.string(fields["description"][1], f"{what}: description") or "" \
            if "description" in fields else ""
        layers = self.variant_layers(fields["upstreams"][1], what, uses) if "upstreams" in fields else {}
        patches = {up: self.series_of(up, names) for up, names in layers.items()}
        sets = self.variant_overlays(fields["overlays"][1], what, overlays) if "overlays" in fields else ()
        requires = tuple(v for v, _ in self.strings(fields["requires"][1], f"{what}: requires", unique=True)) \
            if "requires" in fields else ()
        return Variant(key, knode.start_mark.line + 1, description,
                       {up: tuple(n for n, _ in names) for up, names in layers.items()}, patches, sets, requires)

    def variant_layers(self, node: yaml.Node, what: str,
                       uses: dict[str, _Use]) -> dict[str, list[tuple[str, yaml.Node]]]:
        result = {}
        for up, (unode, lnode) in self.mapping(node, f"{what}: upstreams", ()).items():
            if up in self._broken:
                continue
            if up not in uses:
                have = ", ".join(uses) or "none"
                self.error(unode, f"{what} names upstream {up!r}, which the model does not have (its upstreams: "
                           f"{have}); a variant appends layers to the model's upstreams")
                continue
            names = self.layer_list(lnode, f"{what}: layers of {up!r}")
            own = {n: item for n, item in uses[up].layers}
            for n, item in names:
                if n in own:
                    self.error(item, f"{what}: layer {n!r} of {up!r} is already the model's (line "
                               f"{own[n].start_mark.line + 1}); appended it would be listed twice")
            result[up] = [(n, item) for n, item in names if n not in own]
        return result

    def variant_overlays(self, node: yaml.Node, what: str, overlays: tuple[str, ...]) -> tuple[str, ...]:
        sets = self.overlay_sets(node, what)
        for name, item in self.strings(node, f"{what}: overlays"):
            if name in overlays:
                self.error(item, f"{what}: overlay set {name!r} is already the model's")
        return tuple(s for s in sets if s not in overlays)

    def overlay_sets(self, node: yaml.Node, what: str) -> tuple[str, ...]:
        names = []
        for value, item in self.layer_list(node, f"{what}: overlays"):
            if not self._is("is_dir", self.path.parent / "overlays" / value):
                self.error(item, f"{what}: overlay set {value!r} not found (overlays/{value}/ is not a folder)")
            else:
                names.append(value)
        return tuple(names)

    def layer_list(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
        names: list[tuple[str, yaml.Node]] = []
        for value, item in self.strings(node, what):
            problem = name_problem(value)
            if problem:
                self.error(item, f"{what}: layer name {short(value)} {problem}")
            elif value in [n for n, _ in names]:
                self.error(item, f"{what}: layer {value!r} is listed twice")
            else:
                names.append((value, item))
        return names

    def layer_series(self, layer: str, upstream: str, node: yaml.Node) -> SeriesFile | None:
        if (layer, upstream) not in self._series:
            self._series[layer, upstream] = self._read_series(layer, upstream, node)
        return self._series[layer, upstream]

    def _read_series(self, layer: str, upstream: str, node: yaml.Node) -> SeriesFile | None:
        folder = series_dir(self.path.parent, layer, upstream)
        series_path = folder / "series"
        if not self._is("is_file", series_path):
            self.error(node, f"layer {layer!r} has no series for upstream {upstream!r} "
                       f"({display(series_path)} not found)")
            return None
        where = display(series_path)
        try:
            data = series_path.read_bytes()
        except OSError as exc:
            self.problems.append(Diagnostic(where, 0, f"cannot read: {exc}"))
            return None
        self.reads.append(("file", str(series_path), hashlib.sha256(data).hexdigest()))
        entries, problems = series_mod.parse_bytes(data, where)
        self.problems += problems
        names, lines = [], []
        base = str(folder)
        for entry in entries:
            if not os.path.isfile(os.path.join(base, entry.name)):  # a string: no Path (nor its parts) per patch
                self.problems.append(Diagnostic(where, entry.line, f"patch file {entry.name} not found in {display(folder)} "
                                                f"(layer {layer!r}, named in {self.where}:{node.start_mark.line + 1})"))
                continue
            names.append(entry.name)
            lines.append(str(entry.line))
        if not names:
            return None
        # the series' patch files as one read: a folder and names a line (a missing one is a problem)
        joined = "\n".join(names)
        self.reads.append(("is_files", base, joined, True))
        return SeriesFile(layer, upstream, series_path, joined, ",".join(lines))

    def _is(self, kind: str, path: Path | str) -> bool:
        """PATH.is_file() or PATH.is_dir() (KIND), noted in `reads`."""
        found = os.path.isfile(path) if kind == "is_file" else os.path.isdir(path)
        self.reads.append((kind, str(path), found))
        return found
