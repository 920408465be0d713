"""Reading generated HTML and SVG back with the standard library's html.parser: a small element tree, and
chart polylines turned back into data coordinates (every plot group says its domain and its pixel box)."""

from __future__ import annotations

from html.parser import HTMLParser

VOID = {"meta", "input", "br", "img", "link", "hr", "col", "source", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    def all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(child.attrs.get(k.replace("_", "-")) == v
                                                          for k, v in attrs.items()):
                found.append(child)
            found += child.all(tag, **attrs)
        return found

    def has_class(self, name: str) -> bool:
        return name in self.attrs.get("class", "").split()

    def texts(self) -> str:
        return self.text + "".join(c.texts() for c in self.children)


class Tree(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        node = self.cur
        while node.parent is not None and node.tag != tag:
            node = node.parent
        assert node.tag == tag, f"</{tag}> closes nothing open"
        self.cur = node.parent  # type: ignore[assignment]

    def handle_data(self, data: str) -> None:
        self.cur.text += data


def points_back(polyline: Node) -> list[tuple[float, float]]:
    """A polyline's points in data coordinates (its plot group's data-domain and data-box)."""
    plot = polyline.parent
    assert plot is not None and plot.has_class("plot")
    x0, x1, y0, y1 = map(float, plot.attrs["data-domain"].split())
    left, top, width, height = map(float, plot.attrs["data-box"].split())
    out = []
    for pair in polyline.attrs["points"].split():
        px, py = map(float, pair.split(","))
        out.append((x0 + (px - left) / width * (x1 - x0), y0 + (top + height - py) / height * (y1 - y0)))
    return out


def assert_curve(polylines: list[Node], xs: list[float], ys: list[float | None]) -> None:
    """The polylines of one line, joined, are the logged (x, y) pairs, within the 0.01 px rounding."""
    got = [p for line in polylines for p in points_back(line)]
    want = [(x, y) for x, y in zip(xs, ys) if y is not None]
    assert len(got) == len(want)
    plot = polylines[0].parent
    x0, x1, y0, y1 = map(float, plot.attrs["data-domain"].split())  # type: ignore[union-attr]
    _, _, width, height = map(float, plot.attrs["data-box"].split())  # type: ignore[union-attr]
    for (gx, gy), (wx, wy) in zip(got, want):
        assert abs(gx - wx) <= 0.006 * (x1 - x0) / width + 1e-9
        assert abs(gy - wy) <= 0.006 * (y1 - y0) / height + 1e-9
