"""The rule graph figure (``report/dag.svg``), drawn without any system binary.

``snakemake --rulegraph`` prints the graph in graphviz's DOT language. Graphviz's ``dot`` is an apt/conda
package, not a pip one, and the README's run command must need nothing but ``python3``; so the graph is
parsed here and laid out by a small layered (Sugiyama-style) layout written straight to SVG. ``dot`` is
used instead only when asked for (``engine="dot"``), or with ``engine="auto"`` when it is on ``PATH``.

A figure must never stop the DAG: :func:`write_rulegraph` catches every failure (snakemake, parsing,
layout, drawing) and writes a figure that says "DAG figure unavailable: <reason>" instead.
"""

from __future__ import annotations

import colorsys
import graphlib
import itertools
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from scipy.optimize import lsq_linear

from workflow_scripts import atomic

Engine = Literal["auto", "builtin", "dot"]
ENGINES: tuple[str, ...] = ("auto", "builtin", "dot")

# Geometry of the built-in drawing, in SVG user units (px). Labels use a sans font at FONT_SIZE; CHAR_WIDTH
# over-estimates its mean advance so a box is never narrower than its label in any common sans font.
FONT_SIZE = 11
CHAR_WIDTH = 6.6
BOX_HEIGHT = 26
BOX_PAD = 10
LAYER_GAP = 34
NODE_GAP = 14
DUMMY_WIDTH = 6
MARGIN = 12


@dataclass
class RuleGraph:
    """Rules (node id -> label, colour) and dependency edges (producer -> consumer) of a rule graph."""

    labels: dict[str, str]
    colors: dict[str, str] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)


_ATTR = re.compile(r'(\w+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\]\s]+)')
_NODE = re.compile(r"^\s*(\w+)\s*\[(.*)\]\s*;?\s*$")
_EDGE = re.compile(r"^\s*(\w+)\s*->\s*(\w+)\s*;?\s*$")


def parse_dot(text: str) -> RuleGraph:
    """Parse the DOT that ``snakemake --rulegraph`` prints (one node or edge statement per line)."""
    start = text.find("digraph")
    if start < 0:
        raise ValueError("no 'digraph' in the snakemake --rulegraph output")
    graph = RuleGraph(labels={})
    for line in text[start:].splitlines()[1:]:
        if (edge := _EDGE.match(line)) is not None:
            graph.edges.append((edge.group(1), edge.group(2)))
        elif (node := _NODE.match(line)) is not None and node.group(1) not in ("graph", "node", "edge"):
            attrs = {k: v.strip('"') for k, v in _ATTR.findall(node.group(2))}
            graph.labels[node.group(1)] = attrs.get("label", node.group(1))
            graph.colors[node.group(1)] = _color(attrs.get("color", ""))
    if not graph.labels:
        raise ValueError("the snakemake --rulegraph output has no rules")
    unknown = {n for e in graph.edges for n in e} - set(graph.labels)
    if unknown:
        raise ValueError(f"the snakemake --rulegraph output has edges to undeclared nodes {sorted(unknown)}")
    return graph


def _color(value: str) -> str:
    """Snakemake writes node colours as DOT's 'H S V' triple (each in 0..1); SVG wants #rrggbb."""
    try:
        h, s, v = (float(x) for x in value.split())
    except ValueError:
        return "#6b7b8c"
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)))


# --- layout ---------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """Node boxes (centre x, centre y, width) and each edge's polyline, ready to draw."""

    width: float
    height: float
    boxes: dict[str, tuple[float, float, float]]
    paths: list[list[tuple[float, float]]]  # producer -> consumer, already in arrow direction
    loops: list[str]  # rules that depend on themselves (other wildcards of the same rule)


def _acyclic(nodes: list[str], edges: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Edges to reverse so the graph has no cycle: the back edges of a depth-first search.

    Rule graphs have cycles (``select_checkpoint`` reads ``rl_decoder`` and feeds another one); reversing
    a back edge keeps it in the drawing while the layering sees a DAG. Searching from the rules without
    inputs first makes the reversed edges the ones that really point 'backwards' in the pipeline.
    """
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    indegree = dict.fromkeys(nodes, 0)
    for a, b in edges:
        succ[a].append(b)
        indegree[b] += 1
    state = dict.fromkeys(nodes, 0)  # 0 new, 1 on the stack, 2 done
    back: set[tuple[str, str]] = set()
    for root in sorted(nodes, key=lambda n: (indegree[n] > 0, nodes.index(n))):
        if state[root]:
            continue
        stack = [(root, iter(succ[root]))]
        state[root] = 1
        while stack:  # iterative: no recursion limit on big graphs
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state[child] == 1:
                back.add((node, child))
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(succ[child])))
    return back


def _layers(nodes: list[str], dag: list[tuple[str, str]]) -> dict[str, int]:
    """Longest-path layering: a rule sits one layer below the deepest rule it reads from."""
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in dag:
        preds[b].append(a)
    layer: dict[str, int] = {}
    for n in graphlib.TopologicalSorter(preds).static_order():
        layer[n] = 1 + max((layer[p] for p in preds[n]), default=-1)
    return layer


def _crossings(order: list[list[str]], succ: dict[str, list[str]]) -> int:
    """Edge crossings between consecutive layers of ``order``."""
    total = 0
    for upper, lower in itertools.pairwise(order):
        pos = {n: i for i, n in enumerate(lower)}
        ends = [(i, pos[t]) for i, n in enumerate(upper) for t in succ[n] if t in pos]
        total += sum(1 for a, b in ends for c, d in ends if a < c and b > d)
    return total


def _barycentre_sweep(
    order: list[list[str]], neighbours: dict[str, list[str]], down: bool
) -> list[list[str]]:
    """One sweep of the barycentre heuristic: each layer sorted by the mean position of its neighbours in
    the layer just fixed (a node without any keeps its place)."""
    result = [list(row) for row in order]
    indices = range(1, len(result)) if down else range(len(result) - 2, -1, -1)
    for i in indices:
        fixed = {n: j for j, n in enumerate(result[i - 1 if down else i + 1])}
        row = result[i]
        keys = {}
        for j, n in enumerate(row):
            near = [fixed[m] for m in neighbours[n] if m in fixed]
            keys[n] = sum(near) / len(near) if near else j
        result[i] = sorted(row, key=keys.__getitem__)
    return result


def _transpose(order: list[list[str]], succ: dict[str, list[str]]) -> None:
    """Swap neighbours in a layer while that lowers the crossings with the layers above and below."""
    improved = True
    while improved:
        improved = False
        for i, row in enumerate(order):
            window = slice(max(i - 1, 0), i + 2)
            for j in range(len(row) - 1):
                before = _crossings(order[window], succ)
                row[j], row[j + 1] = row[j + 1], row[j]
                if _crossings(order[window], succ) < before:
                    improved = True
                else:
                    row[j], row[j + 1] = row[j + 1], row[j]


def _positions(
    order: list[list[str]], width: dict[str, float], succ: dict[str, list[str]]
) -> dict[str, float]:
    """x of every box centre: the least-squares fit of each edge's two ends to the same x, weighted as dot
    weights them (1 between rules, 2 rule-dummy, 8 dummy-dummy: long edges run straight), subject to
    each layer's order and gaps. Written as x = start of the layer + fixed minimal offsets + non-negative
    slack per gap, it is a bounded linear least-squares problem (scipy's ``lsq_linear``)."""
    column: dict[str, int] = {}  # variable of the node's layer start
    offset: dict[str, float] = {}  # minimal distance from the layer start
    slack: dict[str, list[int]] = {}  # variables of the gaps to its left
    count = 0
    for row in order:
        start, count, cursor, gaps = count, count + 1, 0.0, []
        for j, n in enumerate(row):
            if j:
                cursor += (width[row[j - 1]] + width[n]) / 2 + NODE_GAP
                gaps = [*gaps, count]
                count += 1
            column[n], offset[n], slack[n] = start, cursor, gaps
    edges = [(u, v) for u, vs in succ.items() for v in vs]
    matrix = np.zeros((len(edges) + 1, count))
    rhs = np.zeros(len(edges) + 1)
    for i, (u, v) in enumerate(edges):
        weight = (1.0, 2.0, 8.0)[_is_dummy(u) + _is_dummy(v)] ** 0.5
        for node, sign in ((u, weight), (v, -weight)):
            matrix[i, column[node]] += sign
            matrix[i, slack[node]] += sign
        rhs[i] = weight * (offset[v] - offset[u])
    matrix[-1, 0] = 1e-3  # pins the translation (the objective only sees differences)
    lower = np.zeros(count)
    lower[[column[row[0]] for row in order]] = -np.inf
    z = lsq_linear(matrix, rhs, bounds=(lower, np.inf), method="bvls").x
    return {n: float(z[column[n]] + offset[n] + z[slack[n]].sum()) for n in column}


def _is_dummy(node: str) -> bool:
    return "#" in node


def layout(graph: RuleGraph) -> Layout:
    """Layered (Sugiyama) layout: cycles broken, longest-path layers, a dummy node per layer a long edge
    crosses, barycentre ordering + transposition, x by least squares. Inputs on top, ``all`` at the bottom."""
    nodes = list(graph.labels)
    rank = {n: i for i, n in enumerate(nodes)}
    edges = sorted({e for e in graph.edges if e[0] != e[1]}, key=lambda e: (rank[e[0]], rank[e[1]]))
    loops = sorted({a for a, b in graph.edges if a == b}, key=rank.__getitem__)
    back = _acyclic(nodes, edges)
    # both edges of a two-rule cycle stay: after reversal they are parallel, and both are drawn
    dag = [(b, a) if (a, b) in back else (a, b) for a, b in edges]
    reversed_ = [e in back for e in edges]
    layer = _layers(nodes, dag)

    # Long edges pass through one dummy node per layer they cross, so no edge is drawn through a box.
    width = {n: len(graph.labels[n]) * CHAR_WIDTH + 2 * BOX_PAD for n in nodes}
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    chains: list[list[str]] = []
    for i, (a, b) in enumerate(dag):
        chain = [a, *(f"{i}#{k}" for k in range(layer[a] + 1, layer[b])), b]  # DOT ids have no '#'
        for k, dummy in enumerate(chain[1:-1], start=layer[a] + 1):
            layer[dummy], width[dummy], succ[dummy] = k, DUMMY_WIDTH, []
        for u, v in itertools.pairwise(chain):
            succ[u].append(v)
        chains.append(chain)
    pred: dict[str, list[str]] = {n: [] for n in succ}
    for u, vs in succ.items():
        for v in vs:
            pred[v].append(u)

    order: list[list[str]] = [[] for _ in range(max(layer.values()) + 1)]
    for n in succ:  # declaration order first (snakemake lists rules roughly in DAG order)
        order[layer[n]].append(n)
    best, fewest = order, _crossings(order, succ)
    for iteration in range(12):
        down = iteration % 2 == 0
        order = _barycentre_sweep(order, pred if down else succ, down)
        if (crossings := _crossings(order, succ)) < fewest:
            best, fewest = order, crossings
    order = best
    _transpose(order, succ)

    x = _positions(order, width, succ)
    left = min(x[n] - width[n] / 2 for n in x)
    right = max(x[n] + width[n] / 2 for n in x)
    x = {n: v + MARGIN - left for n, v in x.items()}
    y = {n: MARGIN + layer[n] * (BOX_HEIGHT + LAYER_GAP) + BOX_HEIGHT / 2 for n in x}

    # Spread the ends of a box's edges over its side, ordered by where each edge goes, so arrows do not
    # all meet in one point (dot's ports).
    port: dict[tuple[int, int], float] = {}
    for end, toward in ((0, 1), (-1, -2)):
        by_node: dict[str, list[int]] = {}
        for i, chain in enumerate(chains):
            by_node.setdefault(chain[end], []).append(i)
        for n, members in by_node.items():
            members.sort(key=lambda i: x[chains[i][toward]])
            span = min(0.7 * width[n], 12.0 * (len(members) - 1))
            for k, i in enumerate(members):
                port[(i, end)] = x[n] + (span * (k / (len(members) - 1) - 0.5) if len(members) > 1 else 0.0)
    paths = []
    for i, chain in enumerate(chains):
        points = [(port[(i, 0)], y[chain[0]] + BOX_HEIGHT / 2)]
        points += [(x[d], y[d]) for d in chain[1:-1]]
        points.append((port[(i, -1)], y[chain[-1]] - BOX_HEIGHT / 2))
        paths.append(points[::-1] if reversed_[i] else points)
    return Layout(
        width=right - left + 2 * MARGIN + (22 if loops else 0),  # room for the self-loops' arcs
        height=MARGIN * 2 + len(order) * (BOX_HEIGHT + LAYER_GAP) - LAYER_GAP,
        boxes={n: (x[n], y[n], width[n]) for n in nodes},
        paths=paths,
        loops=loops,
    )


# --- drawing --------------------------------------------------------------------------------------------


def _smooth(points: list[tuple[float, float]]) -> str:
    """A smooth path through ``points``: Catmull-Rom through the bends (dummy nodes), vertical tangents
    where it leaves and enters a box (dot's spline look)."""
    tangents = []
    for i, (_, py) in enumerate(points):
        if 0 < i < len(points) - 1:
            (ax, ay), (bx, by) = points[i - 1], points[i + 1]
            # capped sideways: a bend between two distant columns must not swing wider than they are
            tx = max(-LAYER_GAP, min(LAYER_GAP, (bx - ax) / 2))
            tangents.append((tx, (by - ay) / 2))
        else:
            other = points[1] if i == 0 else points[-2]
            tangents.append((0.0, abs(other[1] - py)))
    parts = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    for i in range(1, len(points)):
        (x0, y0), (x1, y1) = points[i - 1], points[i]
        (tx0, ty0), (tx1, ty1) = tangents[i - 1], tangents[i]
        sign = 1.0 if y1 >= y0 else -1.0  # a back edge runs upwards
        c0 = (x0 + tx0 / 3, y0 + sign * abs(ty0) / 3)
        c1 = (x1 - tx1 / 3, y1 - sign * abs(ty1) / 3)
        parts.append(f"C{c0[0]:.1f},{c0[1]:.1f} {c1[0]:.1f},{c1[1]:.1f} {x1:.1f},{y1:.1f}")
    return " ".join(parts)


def draw(graph: RuleGraph, title: str = "Rule graph") -> str:
    """The rule graph as standalone SVG markup."""
    plan = layout(graph)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{plan.width:.0f}" height="{plan.height:.0f}" '
        f'viewBox="0 0 {plan.width:.0f} {plan.height:.0f}" font-family="DejaVu Sans, Helvetica, Arial, '
        f'sans-serif" font-size="{FONT_SIZE}" role="img">',
        f"<title>{escape(title)}</title>",
        "<desc>snakemake --rulegraph, laid out by workflow_scripts.report.dag</desc>",
        '<defs><marker id="dag-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8c8c8c"/></marker>'
        "</defs>",
        '<rect width="100%" height="100%" fill="white"/>',
        '<g fill="none" stroke="#9a9a9a" stroke-width="1.4">',
    ]
    for points in plan.paths:
        out.append(f'<path d="{_smooth(points)}" marker-end="url(#dag-arrow)"/>')
    for n in plan.loops:
        cx, cy, w = plan.boxes[n]
        x1, top, bottom = cx + w / 2, cy - BOX_HEIGHT / 4, cy + BOX_HEIGHT / 4
        out.append(
            f'<path d="M{x1:.1f},{top:.1f} C{x1 + 20:.1f},{top - 6:.1f} {x1 + 20:.1f},{bottom + 6:.1f} '
            f'{x1:.1f},{bottom:.1f}" marker-end="url(#dag-arrow)"/>'
        )
    out.append("</g>")
    for n, (cx, cy, w) in plan.boxes.items():
        out.append(
            f'<g class="rule" id={quoteattr("rule-" + graph.labels[n])}>'
            f'<rect x="{cx - w / 2:.1f}" y="{cy - BOX_HEIGHT / 2:.1f}" width="{w:.1f}" height="{BOX_HEIGHT}" '
            f'rx="6" fill="white" stroke="{graph.colors.get(n, "#6b7b8c")}" stroke-width="2"/>'
            f'<text x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle" dominant-baseline="central">'
            f"{escape(graph.labels[n])}</text></g>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def unavailable(reason: str, what: str = "DAG figure") -> str:
    """A small SVG that says why a figure could not be drawn (the report shows it in place)."""
    lines = [line for line in str(reason).strip().splitlines() if line.strip()][-3:] or ["unknown error"]
    lines = [f"{what} unavailable: {lines[0]}", *lines[1:]]
    lines = [line if len(line) <= 160 else line[:157] + "..." for line in lines]
    height = 20 + 18 * len(lines)
    width = max(320, 12 + 7 * max(len(line) for line in lines))
    text = "".join(f'<text x="10" y="{24 + 18 * i}">{escape(line)}</text>' for i, line in enumerate(lines))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
        f'font-size="12" role="img" class="unavailable"><title>{escape(what)} unavailable</title>'
        f'<rect width="100%" height="100%" fill="#fff4e0" stroke="#e89b2f"/>{text}</svg>\n'
    )


# --- the command --------------------------------------------------------------------------------------


def snakemake_rulegraph(snakefile: str, configfile: str, timeout: float = 600) -> str:
    """The DOT text of ``snakemake --rulegraph all`` for this Snakefile and config."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        snakefile,
        "--configfile",
        configfile,
        "--rulegraph",
        "--nolock",
        "--quiet",
        "all",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"snakemake --rulegraph exited with {done.returncode}: {tail}")
    return done.stdout


def render(dot_text: str, engine: Engine = "auto") -> tuple[str, str]:
    """(SVG, engine used). ``auto`` uses graphviz's ``dot`` when it is on PATH and the built-in layout
    otherwise or when ``dot`` fails; ``dot`` insists on graphviz."""
    if engine not in ENGINES:
        raise ValueError(f"unknown DAG engine {engine!r}: use one of {', '.join(ENGINES)}")
    dot = shutil.which("dot") if engine in ("auto", "dot") else None
    if engine == "dot" and dot is None:
        raise RuntimeError(
            "graphviz's `dot` is not on PATH: apt-get install graphviz, or use --engine builtin"
        )
    if dot is not None:
        done = subprocess.run([dot, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=120)
        if done.returncode == 0 and "<svg" in done.stdout:
            return done.stdout, "dot"
        if engine == "dot":
            raise RuntimeError(f"dot -Tsvg exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    return draw(parse_dot(dot_text)), "builtin"


def write_rulegraph(snakefile: str, configfile: str, out: Path, engine: Engine = "auto") -> str:
    """Write the rule graph to ``out`` and return the engine that drew it, or ``"unavailable"`` after
    writing a figure that names the failure. Never raises for a drawing failure: a figure is not worth
    stopping a run for."""
    try:
        svg, used = render(snakemake_rulegraph(snakefile, configfile), engine)
    except Exception as error:  # any failure -> a figure that says why, and the DAG goes on
        reason = f"{type(error).__name__}: {error}"
        print(f"DAG figure unavailable: {reason}", file=sys.stderr)
        svg, used = unavailable(reason), "unavailable"
    atomic.write_text(out, svg)
    return used
