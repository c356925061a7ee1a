"""The shapes of a specimen: body ellipses, legs, antennae and translucent wings.

A specimen is drawn in body coordinates (head towards +x, length ~1) as a list
of shapes that :mod:`.images` places, rotates and paints onto the photo.  Every
body plan (fly, wasp, beetle, bug, moth, spider, springtail) has its own
function; they share the drawing primitives of :class:`_Drawing`.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

__all__: list[str] = []

_T24 = np.linspace(0, 2 * np.pi, 24, endpoint=False)
_COS24, _SIN24 = np.cos(_T24), np.sin(_T24)


def _ell(cx, cy, rx, ry, rot=0.0):
    x, y = rx * _COS24, ry * _SIN24
    if rot:
        c, s = math.cos(rot), math.sin(rot)
        x, y = x * c - y * s, x * s + y * c
    return np.stack([cx + x, cy + y], 1)


class _Drawing:
    """A specimen's shapes in three layers, drawn in order: legs and antennae, body, wings and head.

    A shape is ``(kind, points, rgba, extra)``, where kind is "poly" (extra:
    outline colour or None) or "line" (extra: width in body lengths).
    """

    def __init__(self, rng, colour):
        self.u = u = rng.uniform
        self.c = [float(v) for v in np.asarray(colour, dtype=float)]
        self.under, self.body, self.over = [], [], []
        self.lw = u(0.014, 0.020)  # leg width in body lengths
        self.leg_col = self.col(0.8, 240)
        tint = (int(u(200, 225)), int(u(198, 220)), int(u(190, 215)))
        self.wing_fill = tint + (int(u(70, 110)),)
        e = int(u(70, 110))
        self.wing_edge = (e, int(e * 0.95), int(e * 0.9), int(u(70, 120)))
        self.bw = u(0.85, 1.2)  # body width factor

    def shapes(self):
        return self.under + self.body + self.over

    def col(self, f=1.0, a=255, add=0.0):
        """The body colour scaled by ``f`` and shifted by ``add``, with alpha ``a``."""
        return tuple(min(255, max(0, int(v * f + add))) for v in self.c) + (int(a),)

    def legs(self, x0, x1, n_pairs, length, spread=1.0):
        u = self.u
        xs = np.linspace(x0, x1, n_pairs)
        # angle from the body axis: front legs forward, hind legs backward
        base = np.linspace(0.95, 2.25, n_pairs) if n_pairs > 1 else np.array([1.6])
        for x, b in zip(xs, base):
            bend = (b - 1.6) * 0.55  # knees bend further towards the leg's direction
            for side in (-1, 1):
                a1 = b + u(-0.18, 0.18)
                a2 = a1 + bend + u(-0.2, 0.2)
                a3 = a2 + u(-0.25, 0.25)
                p0 = np.array([x, 0.0])
                p1 = p0 + length * 0.38 * spread * np.array([math.cos(a1), math.sin(a1)])
                p2 = p1 + length * 0.42 * np.array([math.cos(a2), math.sin(a2)])
                p3 = p2 + length * 0.2 * np.array([math.cos(a3), math.sin(a3)])
                pts = np.array([p0, p1, p2, p3]) * np.array([1.0, side])
                self.under.append(("line", pts[:3], self.leg_col, self.lw))
                self.under.append(("line", pts[2:], self.leg_col, self.lw * 0.7))

    def antennae(self, x, length, segs=3, curl=0.25):
        u = self.u
        a0 = u(0.25, 0.6)
        for side in (-1, 1):
            p = np.array([x, 0.02])
            pts = [p]
            a = a0 + u(-0.1, 0.1)
            for _ in range(segs):
                a += u(-curl, curl * 1.5)
                p = p + (length / segs) * np.array([math.cos(a), math.sin(a)])
                pts.append(p)
            self.under.append(("line", np.array(pts) * np.array([1.0, side]), self.col(0.75, 235), self.lw * 0.65))

    def blob(self, layer, cx, cy, rx, ry, f=1.0, rot=0.0, shine=True):
        layer.append(("poly", _ell(cx, cy, rx, ry, rot), self.col(f), self.col(f * 0.6)))
        if shine:  # a soft dorsal highlight gives the body some volume
            highlight = _ell(cx + rx * 0.08, cy - ry * 0.15, rx * 0.6, ry * 0.35, rot)
            layer.append(("poly", highlight, self.col(f, 70, 45), None))

    def stripes(self, cx, rx, ry, k):
        for j in range(k):
            x = cx + rx * (0.6 - 1.2 * (j + 0.5) / k)
            h = ry * math.sqrt(max(0.0, 1 - ((x - cx) / rx) ** 2)) * 0.95
            self.body.append(("line", np.array([[x, -h], [x, h]]), self.col(0.55, 110), self.lw * 0.6))

    def wing(self, x, angle, length, width, fill=None, veins=3):
        edge = self.wing_edge
        cx = x - math.cos(angle) * length * 0.5
        cy = math.sin(angle) * length * 0.5
        for side in (-1, 1):
            rot = (math.pi - angle) * side
            self.over.append(("poly", _ell(cx, cy * side, length / 2, width / 2, rot), fill or self.wing_fill, edge))
            for v in range(veins):
                t = (v + 1) / (veins + 1) - 0.5
                tip = np.array([cx - math.cos(angle) * length * 0.42, cy + t * width * 0.5])
                pts = np.array([[x, 0.01], tip]) * np.array([1.0, side])
                self.over.append(("line", pts, edge[:3] + (edge[3] // 2,), self.lw * 0.3))


# One function per body plan.  The order of the random draws in each is part of
# the generated data: reordering them changes every image of a seed.


def _fly(d, rng, winged):
    """Flies and generic insects; ``winged=False`` gives wings to half of them."""
    u, bw = d.u, d.bw
    d.legs(0.17, 0.03, 3, u(0.45, 0.8) if rng.random() < 0.7 else u(0.8, 1.1))
    ra = u(0.26, 0.36)
    d.blob(d.body, -0.20, 0, ra, 0.12 * bw)
    d.stripes(-0.20, ra, 0.12 * bw, 4)
    d.blob(d.body, 0.10, 0, 0.15, 0.115 * bw, 0.85)
    if winged or rng.random() < 0.5:
        d.wing(0.12, u(0.25, 0.6), u(0.65, 0.95), u(0.2, 0.3))
    d.blob(d.over, 0.29, 0, 0.07, 0.09, 0.9, shine=False)
    eye = (int(u(90, 150)), int(u(25, 45)), int(u(20, 35)), 235) if rng.random() < 0.5 else d.col(0.45)
    for side in (-1, 1):
        d.over.append(("poly", _ell(0.30, side * 0.055, 0.04, 0.035), eye, None))
    d.antennae(0.34, u(0.10, 0.45))


def _wasp(d, rng):
    u, bw = d.u, d.bw
    d.legs(0.15, 0.03, 3, u(0.5, 0.8))
    ra = u(0.22, 0.28)
    d.blob(d.body, -0.05 - ra, 0, ra, 0.13 * bw)
    d.stripes(-0.05 - ra, ra, 0.13 * bw, 3)
    d.body.append(("poly", _ell(-0.04, 0, 0.05, 0.025), d.col(0.8), None))  # petiole
    d.blob(d.body, 0.12, 0, 0.14, 0.10 * bw, 0.9)
    spread = u(0.2, 0.45)
    d.wing(0.13, spread, u(0.7, 0.95), u(0.2, 0.26))
    d.wing(0.08, spread + 0.2, u(0.45, 0.6), u(0.11, 0.15), veins=1)
    d.blob(d.over, 0.30, 0, 0.07, 0.09, 0.85, shine=False)
    d.antennae(0.35, u(0.35, 0.6), segs=4, curl=0.3)


def _beetle(d, rng):
    u, bw = d.u, d.bw
    d.legs(0.15, -0.08, 3, u(0.45, 0.6))
    for side in (-1, 1):  # the two elytra
        d.blob(d.body, -0.14, side * 0.07 * bw, 0.33, 0.08 * bw, 1.0 if side < 0 else 0.95)
    d.body.append(("line", np.array([[0.18, 0], [-0.46, 0]]), d.col(0.45, 220), d.lw * 0.5))
    d.blob(d.body, 0.23, 0, 0.09, 0.13 * bw, 0.85)
    d.blob(d.over, 0.35, 0, 0.05, 0.07, 0.8, shine=False)
    d.antennae(0.38, u(0.2, 0.35))


def _bug(d, rng):
    u, bw = d.u, d.bw
    d.legs(0.12, -0.02, 3, u(0.45, 0.65))
    d.blob(d.body, -0.12, 0, 0.38, 0.15 * bw, 0.95)
    for side in (-1, 1):  # folded, roof-like forewings
        forewing = _ell(-0.16, side * 0.05, 0.36, 0.08 * bw, side * 0.05)
        d.over.append(("poly", forewing, d.col(1.05, 170, 10), d.col(0.6, 150)))
    d.blob(d.over, 0.24, 0, 0.08, 0.13 * bw, 0.9)
    d.blob(d.over, 0.34, 0, 0.05, 0.09, 0.85, shine=False)
    d.antennae(0.37, u(0.15, 0.35), segs=2)


def _moth(d, rng):
    u, bw = d.u, d.bw
    d.legs(0.14, 0.02, 3, u(0.4, 0.55))
    d.blob(d.body, -0.18, 0, 0.3, 0.10 * bw, 0.9)
    d.stripes(-0.18, 0.3, 0.10 * bw, 4)
    d.blob(d.body, 0.12, 0, 0.13, 0.11 * bw, 0.85)
    spread = u(0.5, 1.0)
    wf = d.col(1.1, int(u(190, 235)), 20)
    d.wing(0.10, spread, u(0.8, 1.0), u(0.35, 0.5), fill=wf, veins=2)
    for side in (-1, 1):  # a spot on each forewing
        spot = _ell(0.10 - math.cos(spread) * 0.5, side * math.sin(spread) * 0.5, 0.06, 0.04)
        d.over.append(("poly", spot, d.col(0.5, 170), None))
    d.blob(d.over, 0.28, 0, 0.06, 0.08, 0.8, shine=False)
    d.antennae(0.32, u(0.3, 0.5), curl=0.15)


def _spider(d, rng):
    u, bw = d.u, d.bw
    d.legs(0.2, 0.0, 4, u(0.8, 1.15), spread=1.2)
    d.blob(d.body, -0.24, 0, u(0.22, 0.3), 0.2 * bw)
    d.blob(d.body, 0.12, 0, 0.15, 0.13, 0.85)
    for side in (-1, 1):  # palps
        pts = np.array([[0.25, 0.04], [0.33, 0.08], [0.38, 0.06]]) * np.array([1.0, side])
        d.under.append(("line", pts, d.col(0.8, 235), d.lw))


def _springtail(d, rng):
    """Springtails and other soft, wingless bodies."""
    u, bw = d.u, d.bw
    d.legs(0.12, -0.04, 3, u(0.3, 0.45))
    d.blob(d.body, -0.1, 0, 0.42, 0.13 * bw)
    d.stripes(-0.1, 0.42, 0.13 * bw, 6)
    d.blob(d.over, 0.36, 0, 0.07, 0.09, 0.85, shine=False)
    d.antennae(0.41, u(0.2, 0.4))


_PLAN_DRAWERS = {
    "fly": partial(_fly, winged=True),
    "generic": partial(_fly, winged=False),
    "wasp": _wasp,
    "beetle": _beetle,
    "bug": _bug,
    "moth": _moth,
    "spider": _spider,
    "springtail": _springtail,
}


def _specimen(plan, rng, colour):
    """Shapes of a specimen of body plan ``plan`` in body coordinates (head towards +x, length ~1).

    Returns a list of ``(kind, points, rgba, extra)`` drawn in order, where kind
    is "poly" (extra: outline colour or None) or "line" (extra: width in body
    lengths).
    """
    d = _Drawing(rng, colour)
    _PLAN_DRAWERS.get(plan, _springtail)(d, rng)
    return d.shapes()
