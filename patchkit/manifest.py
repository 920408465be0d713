"""`upstreams.yaml`: what is pinned and what each model's workspace is made of.

The file is read with `yaml.compose`, so every problem is reported with its line, and all
problems are collected before anything is raised: a user fixes them in one pass.

    version: 1                     # optional; the schema version
    upstreams:
      mmcv:
        url: https://github.com/open-mmlab/mmcv.git
        pin: 0123456789abcdef0123456789abcdef01234567   # full commit SHA
        track: 1.x                 # branch or tag that rebase follows
    models:
      fbocc:
        description: FB-OCC on Ascend   # optional
        upstreams:                 # upstream -> ordered patch layers
          mmcv: [mmcv-npu, fbocc]
          fb-bev: [fbocc]
        overlays: [npu-common, fbocc]   # optional; default: overlays/<model>/ when it exists
      bevdepth:                    # version 2: a model's own base of an upstream, and variants
        upstreams:
          mmcv:                    # the long form (the short form is a list of layers)
            pin: 89abcdef0123456789abcdef0123456789abcdef   # optional; default: the upstream's pin
            track: 1.x             # optional; default: the upstream's track
            layers: [mmcv-npu, bevdepth]
        variants:                  # hardware/toolchain variants of this one model
          a5:
            description: Atlas A5  # optional
            upstreams: {mmcv: [mmcv-a5]}   # layers appended after the model's
            overlays: [bevdepth-a5]        # overlay sets appended after the model's
            requires: ["torch-npu==2.7.1"] # extra requirements of `install` for this variant
    toolchain:                     # optional; what `patchkit install` puts first into a new venv, per device
      cpu:
        torch: "2.13.0"            # exact versions (== each); torchvision and torch_npu optional
        torchvision: "0.28.0"
        tools: ["setuptools>=77.0.3,<81", wheel, ninja, "numpy<2"]   # build tools, same pip call
        pip_args: []               # index options of that call (--index-url ..., --extra-index-url ...)

A layer's patches for an upstream live in `patches/<layer>/<upstream>/` with a `series` file.
Version 1 (or no `version:`) is read as it always was; a file that says `version: 1` and uses a
version-2 form is refused at that line. Every verb sees a model through `Manifest.effective(model,
variant)`: its upstreams at their effective pins and tracks, its layers, patches and overlays with
the variant's appended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from patchkit import series as series_mod
from patchkit.errors import BadInput, Diagnostic, InvalidInput
from patchkit.paths import display
from patchkit.yamlcheck import Checker, name_problem, short

MANIFEST_NAME = "upstreams.yaml"
SCHEMA_VERSION = 2
READABLE_VERSIONS = ("1", "2")  # 1: no long form, no variants
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
INSTALL_BUILDS = ("wheel", "editable", "command", "none")
INSTALL_KEYS = ("after", "build", "env", "npu_env", "constraints", "pip_args", "command", "requires")
DEVICES = ("npu", "cuda", "cpu")  # every table per device (toolchain, recipe env, verification records)
TOOLCHAIN_KEYS = ("torch", "torchvision", "torch_npu", "tools", "pip_args")
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+!_-]*$")


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    pin: str
    track: str  # a branch or tag; for a PyPI release, a version specifier such as ">=1.6,<1.7"
    line: int
    pin_line: int = 0
    exclude: tuple[str, ...] = ()  # paths the workspace leaves out (sparse checkout patterns)
    pypi: str | None = None  # "name==version" for a PyPI release (then url is "pypi:name==version")
    sha256: str | None = None  # of the release file
    install: dict[str, object] | None = None  # how it is installed (see patchkit.install)
    pinned_by: str | None = None  # in a model's effective view: the model whose block holds the pin

    @property
    def base(self) -> tuple[str, str]:
        """(pin, track): what a series on this upstream is made against and checked towards."""
        return self.pin, self.track

    @property
    def kind(self) -> str:
        return "pypi" if self.pypi else "git"


@dataclass(frozen=True)
class PatchRef:
    """One entry of a series: where the patch file is and where it was named."""

    layer: str
    upstream: str
    name: str
    path: Path
    series_path: Path
    line: int

    @property
    def id(self) -> str:
        return f"{self.layer}/{self.name}"


@dataclass(frozen=True)
class Variant:
    """What a hardware/toolchain variant adds to its model (only the additions)."""

    name: str
    line: int
    description: str = ""
    layers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # upstream -> layers appended
    patches: dict[str, tuple[PatchRef, ...]] = field(default_factory=dict)  # upstream -> those layers' series
    overlays: tuple[str, ...] = ()  # overlay sets appended
    requires: tuple[str, ...] = ()  # pip requirements `install` adds


@dataclass(frozen=True)
class Model:
    name: str
    line: int
    description: str
    layers: dict[str, tuple[str, ...]]  # upstream -> ordered layers
    patches: dict[str, tuple[PatchRef, ...]] = field(default_factory=dict)  # upstream -> series
    overlays: tuple[str, ...] = ()  # overlay sets: folders under overlays/
    pins: dict[str, str] = field(default_factory=dict)  # upstream -> the model's own pin (long form only)
    tracks: dict[str, str] = field(default_factory=dict)  # upstream -> the model's own track (long form only)
    pin_lines: dict[str, int] = field(default_factory=dict)  # upstream -> the line of the model's pin
    variants: dict[str, Variant] = field(default_factory=dict)

    def resolve(self, manifest: Manifest, variant: str | None = None) -> Effective:
        return manifest.effective(self, variant)


@dataclass(frozen=True)
class Effective:
    """A model as the verbs see it: its upstreams at its effective pins and tracks, and its layers,
    patches and overlays with the variant's appended. Made only by `Manifest.effective`."""

    model: Model
    variant: str | None
    upstreams: dict[str, Upstream]  # the model's upstreams, in its order
    layers: dict[str, tuple[str, ...]]
    patches: dict[str, tuple[PatchRef, ...]]
    overlays: tuple[str, ...]
    requires: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def line(self) -> int:
        return self.model.line

    @property
    def description(self) -> str:
        return self.model.description

    @property
    def label(self) -> str:
        """`model` or `model[variant]`, for messages."""
        return f"{self.name}[{self.variant}]" if self.variant else self.name

    def base(self, upstream: str) -> tuple[str, str]:
        return self.upstreams[upstream].base


@dataclass(frozen=True)
class Toolchain:
    """The torch stack of one device kind: installed first, in one pip call, into a new venv."""

    device: str
    line: int
    torch: str
    torchvision: str | None = None
    torch_npu: str | None = None
    tools: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = ()

    @property
    def pins(self) -> dict[str, str]:
        """Package -> the exact version declared."""
        pins = {"torch": self.torch, "torchvision": self.torchvision, "torch_npu": self.torch_npu}
        return {name: version for name, version in pins.items() if version}

    def requirements(self) -> list[str]:
        return [f"{name}=={version}" for name, version in self.pins.items()] + list(self.tools)


@dataclass(frozen=True)
class Manifest:
    path: Path
    upstreams: dict[str, Upstream]
    models: dict[str, Model]
    toolchain: dict[str, Toolchain] = field(default_factory=dict)  # device -> its toolchain

    @property
    def root(self) -> Path:
        return self.path.parent

    def model(self, name: str) -> Model:
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise BadInput(f"unknown model {name!r} in {display(self.path)} (models: {known})")
        return self.models[name]

    def effective(self, model: str | Model | Effective, variant: str | None = None) -> Effective:
        """THE view of MODEL (with VARIANT) every verb works from."""
        if isinstance(model, Effective):
            model = model.model
        found = self.model(model) if isinstance(model, str) else model
        if variant is not None and variant not in found.variants:
            known = ", ".join(sorted(found.variants)) or "none"
            raise BadInput(f"{display(self.path)}:{found.line}: model {found.name!r} has no variant {variant!r} "
                           f"(variants: {known})")
        ups = {up: self._effective_upstream(found, up) for up in found.layers}
        if variant is None:
            return Effective(found, None, ups, dict(found.layers), dict(found.patches), found.overlays)
        v = found.variants[variant]
        layers = {up: found.layers[up] + v.layers.get(up, ()) for up in found.layers}
        patches = {up: found.patches.get(up, ()) + v.patches.get(up, ()) for up in found.layers}
        return Effective(found, variant, ups, layers, patches, found.overlays + v.overlays, v.requires)

    def views(self, models: list[Model] | None = None) -> list[Effective]:
        """Every model (of MODELS, default all) as itself, then each of its variants, in manifest order."""
        chosen = list(self.models.values()) if models is None else models
        return [self.effective(m, v) for m in chosen for v in (None, *m.variants)]

    def _effective_upstream(self, model: Model, up: str) -> Upstream:
        upstream = self.upstreams[up]
        if up not in model.pins and up not in model.tracks:
            return upstream
        pin = model.pins.get(up, upstream.pin)
        return replace(upstream, pin=pin, track=model.tracks.get(up, upstream.track),
                       pin_line=model.pin_lines.get(up, upstream.pin_line),
                       pinned_by=model.name if up in model.pins else None)

    def upstream(self, name: str) -> Upstream:
        if name not in self.upstreams:
            known = ", ".join(sorted(self.upstreams)) or "none"
            raise BadInput(f"unknown upstream {name!r} in {display(self.path)} (upstreams: {known})")
        return self.upstreams[name]


@dataclass
class _Use:
    """One upstream of a model as read: its layers (with their nodes), and the long form's pin and track."""

    layers: list[tuple[str, yaml.Node]]
    pin: str | None = None
    track: str | None = None
    pin_line: int = 0


def series_dir(root: Path, layer: str, upstream: str) -> Path:
    return root / "patches" / layer / upstream


def find(start: Path | None = None) -> Path:
    """The nearest upstreams.yaml in START (default: the current directory) or its parents."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    raise BadInput(f"no {MANIFEST_NAME} in {here} or any parent folder (use --manifest PATH)")


def load(path: Path) -> Manifest:
    """Read and check PATH; raise InvalidInput listing every problem found."""
    where = display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{where}: cannot read: {exc}") from None
    checker = _Checker(path, where)
    manifest = checker.check(text)
    if checker.problems:
        raise InvalidInput(checker.problems)
    assert manifest is not None
    return manifest


class _Checker(Checker):
    def __init__(self, path: Path, where: str) -> None:
        super().__init__(path, where)
        self._series: dict[tuple[str, str], list[PatchRef]] = {}  # a shared layer is read once
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
            (key,) if (self.path.parent / "overlays" / key).is_dir() else ())
        variants: dict[str, Variant] = {}
        if "variants" in fields:
            self.needs_v2(fields["variants"][0], f"{what}: variants")
            variants = self.variants(fields["variants"][1], what, uses, overlays)
        pins = {up: use.pin for up, use in uses.items() if use.pin}
        tracks = {up: use.track for up, use in uses.items() if use.track}
        pin_lines = {up: use.pin_line for up, use in uses.items() if use.pin}
        return Model(key, knode.start_mark.line + 1, description, layers, patches, overlays, pins, tracks,
                     pin_lines, variants)

    def series_of(self, up: str, names: list[tuple[str, yaml.Node]]) -> tuple[PatchRef, ...]:
        return tuple(ref for name, node in names for ref in self.layer_series(name, up, node))

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
            if not (self.path.parent / "overlays" / value).is_dir():
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

    def layer_series(self, layer: str, upstream: str, node: yaml.Node) -> list[PatchRef]:
        if (layer, upstream) not in self._series:
            self._series[layer, upstream] = self._read_series(layer, upstream, node)
        return self._series[layer, upstream]

    def _read_series(self, layer: str, upstream: str, node: yaml.Node) -> list[PatchRef]:
        folder = series_dir(self.path.parent, layer, upstream)
        series_path = folder / "series"
        if not series_path.is_file():
            self.error(node, f"layer {layer!r} has no series for upstream {upstream!r} "
                       f"({display(series_path)} not found)")
            return []
        where = display(series_path)
        entries, problems = series_mod.read(series_path, where)
        self.problems += problems
        refs = []
        for entry in entries:
            patch_path = folder / entry.name
            if not patch_path.is_file():
                self.problems.append(Diagnostic(where, entry.line, f"patch file {entry.name} not found in {display(folder)} "
                                                f"(layer {layer!r}, named in {self.where}:{node.start_mark.line + 1})"))
                continue
            refs.append(PatchRef(layer, upstream, entry.name, patch_path, series_path, entry.line))
        return refs


def write_pin(manifest: Manifest, upstream: Upstream, pin: str) -> None:
    """Set UPSTREAM's pin in the manifest file, editing only that line (or adding it)."""
    from patchkit.paths import atomic_write

    lines = manifest.path.read_text(encoding="utf-8").splitlines(keepends=True)
    if upstream.pin_line:
        line = lines[upstream.pin_line - 1]
        lines[upstream.pin_line - 1] = re.sub(r"(pin:\s*)\S+", lambda m: m.group(1) + pin, line, count=1)
    else:  # after the release's sha256, inside the upstream's block
        first = lines[upstream.line] if upstream.line < len(lines) else "    "
        indent = first[:len(first) - len(first.lstrip())] or "    "
        at = upstream.line
        for i in range(upstream.line, len(lines)):
            if lines[i].strip() and not lines[i].startswith(indent):
                break
            if lines[i].startswith(f"{indent}sha256:"):
                at = i + 1
        lines.insert(at, f"{indent}pin: {pin}\n")
    atomic_write(manifest.path, "".join(lines).encode())
