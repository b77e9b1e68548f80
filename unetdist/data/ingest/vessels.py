"""A branching retinal vessel tree: grown from the optic disc, drawn with cv2 polylines.

Each branch is a smooth random walk (vectorised per branch): its heading integrates a slow bend
plus smoothed curvature noise, its width tapers, and side branches split off with Murray's law
(w_parent^3 = w_rest^3 + w_child^3). Widths are in DRIVE pixels (about 8 px down to 1 px).
`Geometry` (where the FOV, optic disc and macula sit in one image) lives here, beside the
drawing that reads it; `synth` draws one at random per image and shades around the tree.
Every branch belongs to the artery or the vein tree (its root's); a canvas made with
`per_tree=True` also keeps each tree's own layers, which `synth_av` shades and labels apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 3  # cv2 fractional bits: vertices on a 1/8 px grid
MAX_BRANCHES = 600  # bounds the work per image whatever the random draws
MAX_DEPTH = 6
_KERNEL = np.exp(-0.5 * (np.arange(-9, 10) / 3.0) ** 2)
_KERNEL /= np.sqrt((_KERNEL ** 2).sum())  # unit variance after smoothing
ARTERY, VEIN = 1, 2  # tree ids, equal to their class index in an A/V label map
TREES = (ARTERY, VEIN)


@dataclass(frozen=True)
class Geometry:
    """Where things are in one image (pixels of the output size)."""

    h: int
    w: int
    scale: float  # output px per DRIVE px
    cy: float
    cx: float
    radius: float  # FOV radius
    disc: tuple[float, float]  # optic disc centre (y, x)
    disc_r: float
    macula: tuple[float, float]
    macula_r: float


@dataclass(frozen=True)
class Branch:
    y: float  # start (output px)
    x: float
    angle: float  # heading (radians, image coordinates: y down)
    width: float  # DRIVE px
    bend: float  # systematic turn (radians per DRIVE px), fading over bend_len
    bend_len: float  # DRIVE px over which the systematic turn fades (e-folding length)
    length: float  # maximum length (DRIVE px)
    contrast: float  # fractional darkening of a wide vessel
    depth: int
    tree: int  # ARTERY or VEIN: inherited from the root


@dataclass
class TreeLayers:
    """One tree's own drawing: where it is, its darkness, and the centre third of its strokes
    at least 3 px wide (where a wide artery shows its central light reflex)."""

    mask: np.ndarray  # (H, W) uint8 in {0, 1}
    dark: np.ndarray  # (H, W) uint8, as VesselCanvas.dark
    core: np.ndarray  # (H, W) uint8 in {0, 1}


class VesselCanvas:
    """Collects strokes; `mask` and `dark` are filled as strokes are added.

    `dark` holds each pixel's strongest darkening (0..255 = 0..100 %): strokes are drawn in
    order of increasing darkness, so a faint vessel never lightens a crossing dark one.
    With `per_tree`, `trees[ARTERY]` and `trees[VEIN]` are filled too; `mask` and `dark` are
    the same either way (the binary synth output does not depend on it).
    """

    def __init__(self, h: int, w: int, per_tree: bool = False) -> None:
        self.mask = np.zeros((h, w), dtype=np.uint8)
        self.dark = np.zeros((h, w), dtype=np.uint8)
        self.trees: dict[int, TreeLayers] = {}
        if per_tree:
            self.trees = {t: TreeLayers(*(np.zeros((h, w), dtype=np.uint8) for _ in range(3)))
                          for t in TREES}
        # (darkness, thickness, points, tree)
        self._strokes: list[tuple[int, int, np.ndarray, int]] = []

    def add(self, points: np.ndarray, thickness: np.ndarray, darkness: np.ndarray,
            tree: int) -> None:
        """points (n, 2) as (x, y) px; thickness/darkness per segment (n - 1); `tree` is
        ARTERY or VEIN."""
        fixed = np.rint(points * (1 << SHIFT)).astype(np.int32)
        cuts = np.flatnonzero((np.diff(thickness) != 0) | (np.diff(darkness) != 0)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(thickness)]):
            self._strokes.append((int(darkness[a]), int(thickness[a]), fixed[a:b + 1], tree))

    def render(self) -> None:
        # The sort is stable and keyed on (darkness, thickness) only: the tree id never changes
        # the drawing order of `mask` and `dark`.
        for dark, thick, pts, tree in sorted(self._strokes, key=lambda s: (s[0], s[1])):
            cv2.polylines(self.mask, [pts], False, 1, thick, cv2.LINE_8, SHIFT)
            cv2.polylines(self.dark, [pts], False, dark, thick, cv2.LINE_8, SHIFT)
            if self.trees:
                self._render_tree(self.trees[tree], dark, thick, pts)
        self._strokes.clear()

    @staticmethod
    def _render_tree(layers: TreeLayers, dark: int, thick: int, pts: np.ndarray) -> None:
        cv2.polylines(layers.mask, [pts], False, 1, thick, cv2.LINE_8, SHIFT)
        cv2.polylines(layers.dark, [pts], False, dark, thick, cv2.LINE_8, SHIFT)
        if thick >= 3:
            cv2.polylines(layers.core, [pts], False, 1, max(1, round(thick / 3)), cv2.LINE_8,
                          SHIFT)


def _roots(g: Geometry, rng: np.random.Generator, spread: float) -> list[Branch]:
    """Vein/artery pairs along the four arcades (each vein wider and darker than its artery),
    plus a few small vessels off the disc, arteries and veins in turn. `spread` (radians)
    turns each pair's vein and artery apart at the disc."""
    temporal = np.arctan2(g.macula[0] - g.disc[0], g.macula[1] - g.disc[1])
    reach = 2.2 * g.radius / g.scale
    fade = 0.7 * g.radius / g.scale
    turn = np.deg2rad(rng.uniform(60, 85)) / fade  # arcades curve around the macula
    roots = []
    for side in (-1.0, 1.0):
        arcs = ((temporal + side * np.deg2rad(rng.uniform(55, 70)), -side * turn),
                (temporal + np.pi - side * np.deg2rad(rng.uniform(40, 65)), side * 0.3 * turn))
        for heading, bend in arcs:
            for width, contrast, tree in ((rng.uniform(7, 8.5), rng.uniform(0.3, 0.38), VEIN),
                                          (rng.uniform(5, 6.5), rng.uniform(0.22, 0.28), ARTERY)):
                # + 0.0 (the binary images' spread) leaves every float as it was
                apart = (0.5 if tree == VEIN else -0.5) * spread
                a = heading + np.deg2rad(rng.uniform(-10, 10)) + apart
                y, x = g.disc[0] + 0.3 * g.disc_r * np.sin(a), g.disc[1] + 0.3 * g.disc_r * np.cos(a)
                roots.append(Branch(y, x, a, width, bend, fade, reach, contrast, 0, tree))
    for i in range(int(rng.integers(3, 6))):
        a = rng.uniform(0, 2 * np.pi)
        roots.append(Branch(g.disc[0], g.disc[1], a, rng.uniform(2, 3.5), 0.0, 1.0,
                            rng.uniform(80, 200), rng.uniform(0.22, 0.3), 1, TREES[i % 2]))
    return roots


def _path(b: Branch, g: Geometry, rng: np.random.Generator, step: float):
    """Points (n+1, 2) as (x, y), headings (n+1) and the number of points kept."""
    n = max(2, int(b.length / step))
    kappa = np.convolve(rng.standard_normal(n + len(_KERNEL) - 1), _KERNEL, "valid")
    turn = b.bend * step * np.exp(-np.arange(n) * step / b.bend_len)
    wiggle = 0.025 / (1.0 + b.width / 3.0)  # wide vessels run straighter
    heading = b.angle + np.cumsum(turn + wiggle * np.sqrt(step / 3.0) * kappa)
    heading = np.r_[b.angle, heading]
    step_px = step * g.scale
    xs = b.x + np.r_[0.0, np.cumsum(np.cos(heading[:-1]) * step_px)]
    ys = b.y + np.r_[0.0, np.cumsum(np.sin(heading[:-1]) * step_px)]
    r = np.hypot(ys - g.cy, xs - g.cx) / g.radius
    fovea = np.hypot(ys - g.macula[0], xs - g.macula[1]) < 0.35 * g.macula_r
    stop = np.flatnonzero((r > 0.985) | fovea)
    keep = int(stop[0]) if stop.size else n + 1
    return np.stack([xs, ys], axis=1), heading, keep


def _grow(b: Branch, g: Geometry, rng: np.random.Generator, canvas: VesselCanvas,
          step: float) -> list[Branch]:
    """Draw branch `b` and return its children."""
    pts, heading, keep = _path(b, g, rng, step)
    if keep < 2:
        return []
    width = b.width * (1.0 - 0.3 * np.arange(keep) / max(keep - 1, 1))
    children = []
    k = int(rng.exponential(45 + 8 * b.width) / step) + 2
    while b.depth < MAX_DEPTH and k < keep - 2 and width[k] >= 1.5:
        child_w = max(1.0, width[k] * rng.uniform(0.4, 0.8))
        rest = max(1.0, (width[k] ** 3 - child_w ** 3) ** (1 / 3))
        width[k:] *= rest / width[k]
        side = rng.choice((-1.0, 1.0))
        children.append(Branch(
            pts[k, 1], pts[k, 0], heading[k] + side * np.deg2rad(rng.uniform(35, 75)),
            child_w, side * rng.uniform(0, 0.004), 200.0,
            rng.uniform(0.6, 1.2) * 90 * child_w ** 0.7,
            b.contrast * rng.uniform(0.9, 1.05), b.depth + 1, b.tree))
        k += int(rng.exponential(45 + 8 * width[k]) / step) + 2
    seg_w = 0.5 * (width[:-1] + width[1:])
    thickness = np.maximum(1, np.rint(seg_w * g.scale)).astype(np.int32)
    # Thin vessels are fainter (partial-volume), but never invisible.
    darkness = b.contrast * (0.5 + 0.5 * np.minimum(1.0, (seg_w - 1.0) / 5.0))
    # 40 darkness levels: runs of equal (thickness, darkness) become one polyline each.
    canvas.add(pts[:keep], thickness, np.rint(np.clip(darkness, 0, 1) * 40) * (255 / 40),
               b.tree)
    return children


def grow_vessel_tree(canvas: VesselCanvas, g: Geometry, rng: np.random.Generator,
                     spread: float = 0.0) -> None:
    """Grow the whole tree from the optic disc and render it onto `canvas`.

    `spread` (radians) sets each arcade's vein and artery apart where they leave the disc:
    with 0 they start together and run side by side, overlapping (synth's binary images).
    """
    step = max(3.0, 1.5 / g.scale)  # DRIVE px per vertex; >= 1.5 output px at small sizes
    stack = _roots(g, rng, spread)[::-1]
    grown = 0
    while stack and grown < MAX_BRANCHES:
        stack.extend(_grow(stack.pop(), g, rng, canvas, step)[::-1])
        grown += 1
    canvas.render()
