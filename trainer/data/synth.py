"""Procedural RGB-D scenes: indoor-like rooms rendered by vectorised ray casting, with exact metric depth.

No public depth dataset can be downloaded where this project is tested, so this module makes one. A scene is a
box room (floor, four walls, ceiling) holding boxes (furniture, and thin wall-mounted panels), spheres and
vertical cylinders at random poses. Surfaces carry procedural textures (checker tiles, stripes/planks, value
noise) whose apparent frequency shrinks with distance, and are lit by an ambient term plus 1-2 point lights with
Lambert shading, distance falloff and shadow rays; room corners get a little ambient occlusion. A pinhole camera
at a random pose inside the room looks across it. Depth is z-depth along the optical axis (metres), exact per
pixel: perspective, texture gradients, occlusion and shading all agree with it, so it is learnable from the image.

Determinism: frame i of `generate_dataset` depends only on (seed, i) and the frame->scene assignment; scene s
on (seed, s). Results are identical whether frames are rendered in one process or many.

Layouts written by `generate_dataset`:
- `nyu`: `scene_000/rgb_00000.jpg` + `scene_000/sync_depth_00000.png` (uint16 millimetres; beyond 10 m -> 0,
  invalid, as NYU's sensor range) -> read with `dataset_name: NYUDV2` (or convert with rgb_/sync_depth_ patterns);
- `metric`: `scene_000/image_00000.png` + `scene_000/depth_00000.npy` (float32 metres) -> `MetricMonoDataset`.
Annotation files `train.txt` and `val.txt` (val = held-out scenes) are written in `out_dir` with relative paths.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from trainer.data.annotations import write_annotation_file
from trainer.data.depth_io import write_depth_png16

LAYOUTS = ("nyu", "metric")
NYU_MAX_DEPTH = 10.0
FRAMES_PER_SCENE = 8
_EPS = 1e-4
_F = np.float32

# --------------------------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------------------------

PATTERNS = ("plain", "checker", "stripes", "noise")


@dataclass(frozen=True)
class Material:
    """A procedural texture: `pattern` mixes colours `c1`/`c2` (linear RGB) at `freq` cycles per metre."""

    pattern: str
    c1: tuple[float, float, float]
    c2: tuple[float, float, float]
    freq: float
    grain: float  # amplitude of fine albedo noise
    offset: tuple[float, float]  # texture-space offset (also selects the noise lattice region)


@dataclass(frozen=True)
class Box:
    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float  # rotation about the vertical axis (radians)
    material: int


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float
    material: int


@dataclass(frozen=True)
class Cylinder:
    base: tuple[float, float, float]  # centre of the bottom cap
    radius: float
    height: float
    material: int


@dataclass(frozen=True)
class Light:
    position: tuple[float, float, float]
    intensity: float
    color: tuple[float, float, float]


@dataclass
class Scene:
    """A room [0, size[0]] x [0, size[1]] x [0, size[2]] (x, y up, z) with objects and lights."""

    size: tuple[float, float, float]
    room_materials: tuple[int, int, int, int, int, int]  # x-, x+, floor, ceiling, z-, z+
    materials: list[Material]
    boxes: list[Box] = field(default_factory=list)
    spheres: list[Sphere] = field(default_factory=list)
    cylinders: list[Cylinder] = field(default_factory=list)
    lights: list[Light] = field(default_factory=list)
    ambient: float = 0.3
    noise: np.ndarray = field(default_factory=lambda: np.zeros((64, 64), _F))  # value-noise lattice


@dataclass(frozen=True)
class Camera:
    position: tuple[float, float, float]
    rotation: np.ndarray  # 3x3 world-from-camera; columns: right, down, forward (OpenCV convention)
    fx: float
    fy: float
    cx: float
    cy: float


def _color(rng: np.random.Generator, sat: tuple[float, float] = (0.1, 0.6),
           val: tuple[float, float] = (0.25, 0.85)) -> tuple[float, float, float]:
    """A random colour in linear RGB from HSV ranges."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(float(c) ** 2.2 for c in rgb)  # type: ignore[return-value]


def _material(rng: np.random.Generator, pattern: Optional[str] = None, freq: Optional[tuple[float, float]] = None,
              sat: tuple[float, float] = (0.1, 0.6), val: tuple[float, float] = (0.25, 0.85)) -> Material:
    pattern = pattern or str(rng.choice(PATTERNS, p=[0.2, 0.25, 0.3, 0.25]))
    c1 = _color(rng, sat, val)
    c2 = _color(rng, sat, val) if rng.random() < 0.6 else tuple(c * float(rng.uniform(0.35, 0.7)) for c in c1)
    lo, hi = freq or {"plain": (2, 6), "checker": (1, 5), "stripes": (2, 10), "noise": (2, 12)}[pattern]
    return Material(pattern, c1, c2, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),  # type: ignore[arg-type]
                    float(rng.uniform(0.03, 0.12)), (float(rng.uniform(0, 50)), float(rng.uniform(0, 50))))


def random_scene(rng: np.random.Generator) -> Scene:
    """A furnished room with random dimensions, materials, objects and lights."""
    W, H, D = float(rng.uniform(3.0, 6.5)), float(rng.uniform(2.4, 3.1)), float(rng.uniform(3.0, 7.5))
    mats: list[Material] = []

    def add(m: Material) -> int:
        mats.append(m)
        return len(mats) - 1

    floor = add(_material(rng, str(rng.choice(["checker", "stripes", "noise"])), val=(0.2, 0.7)))
    wall = add(_material(rng, str(rng.choice(["plain", "stripes", "noise"], p=[0.5, 0.25, 0.25])),
                         freq=(1.5, 6), sat=(0.0, 0.35), val=(0.5, 0.95)))
    accent = add(_material(rng, sat=(0.1, 0.5), val=(0.4, 0.9))) if rng.random() < 0.5 else wall
    ceiling = add(_material(rng, "plain", sat=(0.0, 0.1), val=(0.8, 0.97)))
    walls = [wall, wall, wall, wall]
    walls[int(rng.integers(4))] = accent
    scene = Scene(size=(W, H, D), room_materials=(walls[0], walls[1], floor, ceiling, walls[2], walls[3]),
                  materials=mats, ambient=float(rng.uniform(0.12, 0.3)),
                  noise=rng.random((64, 64)).astype(_F))
    footprints: list[tuple[float, float, float]] = []  # (x, z, radius) on the floor

    def place(radius: float, near_wall: bool) -> Optional[tuple[float, float]]:
        for _ in range(30):
            if near_wall:  # sides 0/1: the x = 0 / x = W walls (run along z); 2/3: z = 0 / z = D
                side = int(rng.integers(4))
                t = rng.uniform(radius + 0.05, (D if side < 2 else W) - radius - 0.05)
                gap = radius + float(rng.uniform(0.02, 0.3))
                x, z = [(gap, t), (W - gap, t), (t, gap), (t, D - gap)][side]
            else:
                x, z = rng.uniform(radius + 0.2, W - radius - 0.2), rng.uniform(radius + 0.2, D - radius - 0.2)
            if all((x - fx) ** 2 + (z - fz) ** 2 > (radius + fr + 0.05) ** 2 for fx, fz, fr in footprints):
                footprints.append((float(x), float(z), radius))
                return float(x), float(z)
        return None

    for _ in range(int(rng.integers(2, 7))):  # furniture-like boxes
        hx, hz = float(rng.uniform(0.15, 0.8)), float(rng.uniform(0.15, 0.6))
        hy = float(rng.uniform(0.15, 0.95))
        near = rng.random() < 0.6
        spot = place(math.hypot(hx, hz), near)
        if spot is None:
            continue
        yaw = float(rng.normal(0, 0.08)) if near else float(rng.uniform(0, math.pi))
        m = add(_material(rng))
        scene.boxes.append(Box((spot[0], hy, spot[1]), (hx, hy, hz), yaw, m))
        if rng.random() < 0.35:  # something on top
            r = float(rng.uniform(0.06, min(0.25, hx, hz)))
            if rng.random() < 0.5:
                scene.spheres.append(Sphere((spot[0], 2 * hy + r, spot[1]), r, add(_material(rng))))
            else:
                scene.cylinders.append(Cylinder((spot[0], 2 * hy, spot[1]), r, float(rng.uniform(0.1, 0.5)),
                                                add(_material(rng))))
    for _ in range(int(rng.integers(0, 4))):  # spheres on the floor
        r = float(rng.uniform(0.1, 0.45))
        spot = place(r, False)
        if spot is not None:
            scene.spheres.append(Sphere((spot[0], r, spot[1]), r, add(_material(rng))))
    for _ in range(int(rng.integers(0, 4))):  # columns, bins, lamps
        r = float(rng.uniform(0.08, 0.4))
        spot = place(r, rng.random() < 0.5)
        if spot is not None:
            scene.cylinders.append(Cylinder((spot[0], 0.0, spot[1]), r, float(rng.uniform(0.3, min(2.2, H - 0.2))),
                                            add(_material(rng))))
    for _ in range(int(rng.integers(0, 4))):  # pictures / panels on walls (thin boxes)
        side = int(rng.integers(4))
        span = W if side >= 2 else D
        hw_, hh = float(rng.uniform(0.2, min(0.8, span / 4))), float(rng.uniform(0.15, 0.5))
        t = float(rng.uniform(hw_ + 0.1, span - hw_ - 0.1))
        y = float(rng.uniform(max(hh + 0.6, 1.0), H - hh - 0.15))
        th = float(rng.uniform(0.015, 0.06))
        center, half = [((th, y, t), (th, hh, hw_)), ((W - th, y, t), (th, hh, hw_)),
                        ((t, y, th), (hw_, hh, th)), ((t, y, D - th), (hw_, hh, th))][side]
        scene.boxes.append(Box(center, half, 0.0, add(_material(rng, val=(0.1, 0.9)))))
    for k in range(int(rng.integers(1, 3))):
        for _ in range(20):  # not inside a tall object
            pos = (float(rng.uniform(0.3, W - 0.3)), float(H - rng.uniform(0.15, 0.5)),
                   float(rng.uniform(0.3, D - 0.3)))
            if not _inside_any(scene, np.asarray(pos), margin=0.1):
                break
        warm = float(rng.uniform(-0.15, 0.15))
        scene.lights.append(Light(pos, float(rng.uniform(1.5, 3.0)) / (1 + k * 0.5),
                                  (1.0 + warm, 1.0, 1.0 - warm)))
    scene.materials = mats
    return scene


def random_camera(scene: Scene, rng: np.random.Generator, size: tuple[int, int]) -> Camera:
    """A camera inside the room, away from objects, looking across the room at a point 1.5+ m away; poses
    whose view is mostly blocked by a nearby surface (median depth < 1.2 m on a coarse grid) are redrawn."""
    cam = _random_pose(scene, rng, size)
    for _ in range(15):
        o, d = _camera_rays(cam, size, step=max(1, min(size) // 12))
        if float(np.median(_cast(scene, o, d)[0])) >= 1.2:
            break
        cam = _random_pose(scene, rng, size)
    return cam


def _random_pose(scene: Scene, rng: np.random.Generator, size: tuple[int, int]) -> Camera:
    W, H, D = scene.size
    h, w = size
    hfov = math.radians(float(rng.uniform(56, 62)))  # about NYU's Kinect (58 deg)
    fx = (w / 2) / math.tan(hfov / 2)
    for _ in range(100):
        # a hand-held camera at eye/chest height, as in NYU: this prior is what makes the floor's perspective a cue
        pos = np.array([rng.uniform(0.3, W - 0.3), rng.uniform(1.2, min(1.6, H - 0.3)), rng.uniform(0.3, D - 0.3)])
        if not _inside_any(scene, pos, margin=0.25):
            break
    target = pos
    for _ in range(100):
        target = np.array([rng.uniform(0.2, W - 0.2), rng.uniform(0.2, 1.4), rng.uniform(0.2, D - 0.2)])
        if np.linalg.norm((target - pos)[[0, 2]]) > 1.5:
            break
    f = target - pos
    yaw = math.atan2(f[0], f[2]) + float(rng.normal(0, 0.1))
    pitch = float(np.clip(rng.normal(-0.15, 0.08), -0.35, 0.05))  # slightly down, rarely up
    roll = float(rng.normal(0, 0.03))
    fwd = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return Camera(tuple(float(v) for v in pos), np.stack([right, down, fwd], axis=1).astype(_F),  # type: ignore
                  fx, fx, w / 2, h / 2)


def _inside_any(scene: Scene, p: np.ndarray, margin: float) -> bool:
    for b in scene.boxes:
        q = _to_local(tuple(float(c) for c in p), b)
        if all(abs(q[k]) < b.half[k] + margin for k in range(3)):
            return True
    for s in scene.spheres:
        if np.linalg.norm(p - s.center) < s.radius + margin:
            return True
    for c in scene.cylinders:
        if math.hypot(p[0] - c.base[0], p[2] - c.base[2]) < c.radius + margin and \
                c.base[1] - margin < p[1] < c.base[1] + c.height + margin:
            return True
    return False


# --------------------------------------------------------------------------------------------------------------
# Ray casting. Rays are structure-of-arrays: origins o = (ox, oy, oz) (scalars for camera rays, arrays for shadow
# rays) and unnormalised directions d = (dx, dy, dz) arrays; a hit is at o + t * d (t in units of |d|).
# --------------------------------------------------------------------------------------------------------------

Vec = tuple  # (x, y, z): floats or float32 arrays


def _safe(a: np.ndarray) -> np.ndarray:
    return np.where(np.abs(a) < 1e-9, np.float32(1e-9), a)


def _to_local(p: Vec, b: Box, direction: bool = False) -> Vec:
    """World point (or direction) into the box frame (rotation by -yaw about y, then the centre at 0)."""
    x, y, z = p if direction else (p[0] - b.center[0], p[1] - b.center[1], p[2] - b.center[2])
    if b.yaw == 0.0:
        return x, y, z
    c, s = math.cos(b.yaw), math.sin(b.yaw)
    return c * x - s * z, y, s * x + c * z


def _to_world_dir(v: Vec, b: Box) -> Vec:
    x, y, z = v
    if b.yaw == 0.0:
        return x, y, z
    c, s = math.cos(b.yaw), math.sin(b.yaw)
    return c * x + s * z, y, -s * x + c * z


def _hit_box(o: Vec, d: Vec, b: Box, faces: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(t, face) of the entry hit of an oriented box (slab method); t = inf where missed.
    face = axis * 2 + (1 on the + side), computed only when `faces`."""
    lo = _to_local(o, b)
    ld = _to_local(d, b, direction=True)
    near, far = [], []
    for k in range(3):
        inv = 1.0 / _safe(ld[k])
        t1 = (-b.half[k] - lo[k]) * inv
        t2 = (b.half[k] - lo[k]) * inv
        near.append(np.minimum(t1, t2))
        far.append(np.maximum(t1, t2))
    tnear = np.maximum(np.maximum(near[0], near[1]), near[2])
    tfar = np.minimum(np.minimum(far[0], far[1]), far[2])
    t = np.where((tnear <= tfar) & (tnear > _EPS), tnear, np.float32(np.inf))
    if not faces:
        return t, None
    axis = np.where(near[0] >= np.maximum(near[1], near[2]), 0, np.where(near[1] >= near[2], 1, 2))
    dsign = np.choose(axis, ld)
    return t, (axis * 2 + (dsign < 0)).astype(np.int32)


def _hit_sphere(o: Vec, d: Vec, s: Sphere) -> np.ndarray:
    ox, oy, oz = o[0] - s.center[0], o[1] - s.center[1], o[2] - s.center[2]
    dx, dy, dz = d
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - s.radius ** 2
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a
    return np.where((disc >= 0) & (t > _EPS), t, np.float32(np.inf))


def _hit_cylinder(o: Vec, d: Vec, cy: Cylinder, parts: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(t, part) of a vertical cylinder; part 0 = side, 1 = top cap, 2 = bottom cap (only when `parts`)."""
    bx, by, bz = cy.base
    ox, oy, oz = o[0] - bx, o[1], o[2] - bz
    dx, dy, dz = d
    a = dx * dx + dz * dz + 1e-12
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - cy.radius ** 2
    disc = b * b - a * c
    ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
    ys = oy + ts * dy
    best = np.where((disc >= 0) & (ts > _EPS) & (ys >= by) & (ys <= by + cy.height), ts, np.float32(np.inf))
    part = np.zeros(best.shape, np.int32) if parts else None
    inv_dy = 1.0 / _safe(dy)
    for k, yc in ((1, by + cy.height), (2, by)):
        tc = (yc - oy) * inv_dy
        xc, zc = ox + tc * dx, oz + tc * dz
        tc = np.where((tc > _EPS) & (xc * xc + zc * zc <= cy.radius ** 2), tc, np.float32(np.inf))
        closer = tc < best
        best = np.where(closer, tc, best)
        if part is not None:
            part[closer] = k
    return best, part


def _hit(o: Vec, d: Vec, ob, detail: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
    if isinstance(ob, Box):
        return _hit_box(o, d, ob, detail)
    if isinstance(ob, Sphere):
        return _hit_sphere(o, d, ob), None
    return _hit_cylinder(o, d, ob, detail)


def _occluded(o: Vec, d: Vec, scene: Scene) -> np.ndarray:
    """True where the segment o -> o + d (t in (0, 1)) hits an object (walls never occlude inside the room)."""
    blocked = np.zeros(len(d[0]), bool)
    for ob in _objects(scene):
        blocked |= _hit(o, d, ob)[0] < 1.0
    return blocked


def _objects(scene: Scene) -> list:
    return list(scene.boxes) + list(scene.spheres) + list(scene.cylinders)


def _camera_rays(cam: Camera, size: tuple[int, int], step: int = 1) -> tuple[Vec, Vec]:
    """Camera origin and one unnormalised world direction per pixel (every `step`-th pixel), with a forward
    component of 1 so that the ray parameter t is the z-depth."""
    h, w = size
    v, u = np.mgrid[0:h:step, 0:w:step].astype(_F)
    x = (u.ravel() + 0.5 - cam.cx) / cam.fx
    y = (v.ravel() + 0.5 - cam.cy) / cam.fy
    R = cam.rotation
    d = tuple((R[k, 0] * x + R[k, 1] * y + R[k, 2]).astype(_F) for k in range(3))
    return tuple(float(c) for c in cam.position), d


def _cast(scene: Scene, o: Vec, d: Vec):
    """Nearest hits: (t, object id or -1 for the room, box face / cylinder part, room face)."""
    # room (camera inside a box): exit through the nearest of three planes
    t = np.full(d[0].shape, np.inf, _F)
    room_face = np.zeros(d[0].shape, np.int32)  # 0 x-, 1 x+, 2 floor(y-), 3 ceiling(y+), 4 z-, 5 z+
    for k in range(3):
        pos = d[k] > 0
        flat = np.abs(d[k]) < 1e-12  # parallel to this pair of planes: never reaches them
        with np.errstate(divide="ignore", invalid="ignore"):
            tk = (np.where(pos, np.float32(scene.size[k]), np.float32(0)) - o[k]) / d[k]
        tk = np.where(flat, np.float32(np.inf), tk)
        closer = tk < t
        t = np.where(closer, tk, t)
        room_face = np.where(closer, 2 * k + pos, room_face)
    obj = np.full(t.shape, -1, np.int32)
    sub = np.zeros(t.shape, np.int32)
    for k, ob in enumerate(_objects(scene)):
        tk, part = _hit(o, d, ob, detail=True)
        closer = tk < t
        t = np.where(closer, tk, t)
        obj[closer] = k
        if part is not None:
            sub[closer] = part[closer]
    return t.astype(_F), obj, sub, room_face


def render(scene: Scene, cam: Camera, size: tuple[int, int], rng: Optional[np.random.Generator] = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast `scene` from `cam`: (rgb uint8 [h, w, 3], z-depth float32 [h, w] in metres).

    `rng` adds sensor noise to the image (none when None)."""
    h, w = size
    o, d = _camera_rays(cam, size)
    t, obj, sub, room_face = _cast(scene, o, d)
    n_pix = h * w
    p = tuple((o[k] + d[k] * t).astype(_F) for k in range(3))
    normal = [np.zeros(n_pix, _F) for _ in range(3)]
    uv = [np.zeros(n_pix, _F), np.zeros(n_pix, _F)]
    mat = np.zeros(n_pix, np.int32)

    # room surfaces: inward normals; texture coordinates from the two in-plane world axes
    r = obj < 0
    for face in range(6):
        m = r & (room_face == face)
        if not m.any():
            continue
        ax = face // 2
        normal[ax][m] = -1.0 if face % 2 else 1.0
        a, b = {0: (2, 1), 1: (0, 2), 2: (0, 1)}[ax]
        uv[0][m], uv[1][m] = p[a][m], p[b][m]
        mat[m] = scene.room_materials[face]
    for k, ob in enumerate(_objects(scene)):
        m = obj == k
        if not m.any():
            continue
        pk = tuple(c[m] for c in p)
        mat[m] = ob.material
        if isinstance(ob, Box):
            q = _to_local(pk, ob)
            face = sub[m]
            axk = face // 2
            sign = np.where(face % 2 == 1, 1.0, -1.0).astype(_F)
            nl = tuple(np.where(axk == j, sign, np.float32(0)) for j in range(3))
            nw = _to_world_dir(nl, ob)
            for j in range(3):
                normal[j][m] = nw[j]
            uv[0][m] = np.where(axk == 0, q[2], q[0])
            uv[1][m] = np.where(axk == 1, q[2], q[1])
        elif isinstance(ob, Sphere):
            n = tuple((pk[j] - ob.center[j]) / ob.radius for j in range(3))
            for j in range(3):
                normal[j][m] = n[j]
            uv[0][m] = np.arctan2(n[0], n[2]) * ob.radius
            uv[1][m] = np.arccos(np.clip(n[1], -1, 1)) * ob.radius
        else:
            part = sub[m]
            rx, ry, rz = pk[0] - ob.base[0], pk[1] - ob.base[1], pk[2] - ob.base[2]
            side = part == 0
            normal[0][m] = np.where(side, rx / ob.radius, 0)
            normal[1][m] = np.where(side, 0, np.where(part == 1, 1.0, -1.0))
            normal[2][m] = np.where(side, rz / ob.radius, 0)
            uv[0][m] = np.where(side, np.arctan2(rx, rz) * ob.radius, rx)
            uv[1][m] = np.where(side, ry, rz)

    # texture (albedo), antialiased by the pixel footprint on the surface
    dist_dir = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    cos = np.abs(normal[0] * d[0] + normal[1] * d[1] + normal[2] * d[2]) / dist_dir
    footprint = (t * dist_dir) / (cam.fx * np.maximum(cos, 0.2))  # metres per pixel on the surface
    albedo = _albedo(scene, mat, np.stack(uv, 1), footprint)

    # lighting: ambient (hemisphere-weighted, darker in room corners) + point lights with shadows
    irr = scene.ambient * (0.8 + 0.2 * normal[1]) * _corner_occlusion(p, r, room_face, scene.size)
    color = np.repeat(irr[:, None].astype(_F), 3, axis=1)
    origin = tuple(p[j] + normal[j] * np.float32(2e-3) for j in range(3))
    for light in scene.lights:
        to_l = tuple(np.float32(light.position[j]) - origin[j] for j in range(3))
        dist2 = to_l[0] ** 2 + to_l[1] ** 2 + to_l[2] ** 2
        ndl = np.maximum(normal[0] * to_l[0] + normal[1] * to_l[1] + normal[2] * to_l[2], 0) / np.sqrt(dist2)
        lit = ndl > 0
        vis = np.ones(n_pix, _F)
        if lit.any():
            blocked = _occluded(tuple(c[lit] for c in origin), tuple(c[lit] for c in to_l), scene)
            vis[lit] = np.where(blocked, np.float32(0.08), np.float32(1))
        e = light.intensity * ndl * vis / (1.0 + dist2 / 4.0)
        color += e[:, None] * np.asarray(light.color, _F)
    rgb_lin = albedo * color
    # auto exposure, then display gamma
    rgb_lin *= 0.85 / max(float(np.percentile(rgb_lin.max(axis=1), 97)), 1e-3)
    rgb = np.clip(rgb_lin, 0, 1) ** (1 / 2.2)
    if rng is not None:
        rgb = rgb + rng.normal(0, 0.008, rgb.shape).astype(_F)
    rgb8 = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3)
    return rgb8, t.reshape(h, w).astype(np.float32)


def _corner_occlusion(p: Vec, room: np.ndarray, face: np.ndarray, size: tuple[float, float, float]) -> np.ndarray:
    """Ambient darkening near the room's edges: distance to the nearest room plane other than the one hit."""
    occ = np.ones(len(room), _F)
    dists = []
    for k in range(3):
        c = p[k][room]
        dists += [c, size[k] - c]  # faces 2k (minus side) and 2k+1 (plus side)
    dist = np.stack(dists, 1)
    dist[np.arange(len(dist)), face[room]] = np.inf
    occ[room] = 1.0 - 0.35 * np.exp(-dist.min(axis=1) / 0.25)
    return occ


def _lattice(noise: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear value noise from a wrapped lattice at continuous coordinates."""
    n = noise.shape[0]
    xf, yf = np.floor(x), np.floor(y)
    fx, fy = x - xf, y - yf
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    xi, yi = xf.astype(np.int64) % n, yf.astype(np.int64) % n
    x1, y1 = (xi + 1) % n, (yi + 1) % n
    a = noise[yi, xi] * (1 - fx) + noise[yi, x1] * fx
    b = noise[y1, xi] * (1 - fx) + noise[y1, x1] * fx
    return a * (1 - fy) + b * fy


def _albedo(scene: Scene, mat: np.ndarray, uv: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    out = np.empty((len(mat), 3), _F)
    for k in np.unique(mat):
        m = mat == k
        M = scene.materials[int(k)]
        u = uv[m, 0] + M.offset[0]
        v = uv[m, 1] + M.offset[1]
        fw = footprint[m] * M.freq  # texture cycles per pixel
        fade = np.clip(1.0 - 1.5 * fw, 0.0, 1.0)  # too fine to resolve: fade to the mean colour
        sharp = 1.0 / np.maximum(fw * 4.0, 0.02)
        if M.pattern == "checker":
            s = np.sin(np.pi * M.freq * u) * np.sin(np.pi * M.freq * v)
            mix = np.clip(0.5 + s * sharp, 0, 1)
        elif M.pattern == "stripes":
            wob = _lattice(scene.noise, u * 2.0, v * 0.3) * 0.6
            s = np.sin(2 * np.pi * M.freq * (u + wob * 0.1))
            mix = np.clip(0.5 + s * sharp, 0, 1)
        elif M.pattern == "noise":
            mix = 0.65 * _lattice(scene.noise, u * M.freq, v * M.freq) + \
                0.35 * _lattice(scene.noise, u * M.freq * 2.7 + 17, v * M.freq * 2.7 + 5)
            mix = np.clip((mix - 0.5) * 1.8 + 0.5, 0, 1)
        else:  # plain: a mostly uniform colour with soft blotches
            mix = 0.15 * _lattice(scene.noise, u * M.freq * 0.3, v * M.freq * 0.3)
        mix = mix * fade + 0.5 * (1 - fade) if M.pattern != "plain" else mix
        grain = 1.0 + M.grain * (_lattice(scene.noise, u * 40 + 3, v * 40 + 7) - 0.5) * 2 * \
            np.clip(1.0 - 40 * footprint[m], 0, 1)
        c1, c2 = np.asarray(M.c1, _F), np.asarray(M.c2, _F)
        out[m] = (c1 * (1 - mix[:, None]) + c2 * mix[:, None]) * grain[:, None]
    return out


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def render_frame(seed: int | Sequence[int], size: tuple[int, int] = (240, 320)) -> tuple[np.ndarray, np.ndarray]:
    """One random frame in memory: (rgb uint8 [h, w, 3], z-depth float32 [h, w] in metres), determined by `seed`."""
    key = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)]
    scene = random_scene(np.random.default_rng(key + [0]))
    return _render_view(scene, key + [1], size)


def _render_view(scene: Scene, key: list[int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(key)
    cam = random_camera(scene, rng, size)
    return render(scene, cam, size, rng)


@dataclass(frozen=True)
class SynthResult:
    """What `generate_dataset` wrote."""

    out_dir: Path
    layout: str
    num_frames: int
    num_scenes: int
    train_file: Path
    val_file: Optional[Path]  # None with a single scene (nothing to hold out)
    num_train: int
    num_val: int
    val_scenes: tuple[int, ...]
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.num_frames / max(self.seconds, 1e-9)

    def summary(self) -> str:
        """What was written, for people."""
        lines = [f"synthetic RGB-D ({self.layout} layout): {self.num_frames} frames in {self.num_scenes} scene "
                 f"folders under {self.out_dir} ({self.seconds:.1f} s, {self.frames_per_second:.1f} frames/s)",
                 f"  train: {self.train_file} ({self.num_train} samples)"]
        if self.val_file is not None:
            lines.append(f"  val:   {self.val_file} ({self.num_val} samples; held-out scenes "
                         f"{', '.join(str(s) for s in self.val_scenes)})")
        else:
            lines.append("  val:   none (a single scene, or val_fraction 0)")
        dataset = "NYUDV2" if self.layout == "nyu" else "MetricMonoDataset"
        lines.append(f"  read with dataset_name: {dataset}")
        return "\n".join(lines)


def _scene_of(i: int, num: int, scenes: int) -> int:
    return i * scenes // num


def _frame_paths(out_dir: Path, layout: str, i: int, scene: int) -> tuple[Path, Path]:
    folder = out_dir / f"scene_{scene:03d}"
    if layout == "nyu":
        return folder / f"rgb_{i:05d}.jpg", folder / f"sync_depth_{i:05d}.png"
    return folder / f"image_{i:05d}.png", folder / f"depth_{i:05d}.npy"


def _write_frame(job: tuple[Path, str, int, int, int, int, tuple[int, int]]) -> int:
    out_dir, layout, seed, i, num, scenes, size = job
    s = _scene_of(i, num, scenes)
    scene = random_scene(np.random.default_rng([seed, 0, s]))
    rgb, depth = _render_view(scene, [seed, 1, i], size)
    img_path, depth_path = _frame_paths(out_dir, layout, i, s)
    if layout == "nyu":
        Image.fromarray(rgb).save(img_path, quality=95)
        write_depth_png16(depth_path, np.where(depth <= NYU_MAX_DEPTH, depth, 0.0), scale=1000.0)
    else:
        Image.fromarray(rgb).save(img_path, compress_level=3)
        np.save(depth_path, depth.astype(np.float32))
    return i


def generate_dataset(out_dir: str | Path, num: int, size: tuple[int, int] = (240, 320), seed: int = 0,
                     layout: str = "nyu", scenes: Optional[int] = None, progress: bool = True,
                     processes: Optional[int] = None, val_fraction: float = 0.2) -> SynthResult:
    """Render `num` frames into scene folders under `out_dir` and write `train.txt`/`val.txt` beside them.

    `scenes`: number of scene folders (default: one per 8 frames). The last `val_fraction` of the scenes (at least
    one when there are two or more and val_fraction > 0) form the validation split, so validation rooms are never
    seen in training. `processes`: worker processes (default: all CPU cores when `num` >= 16, else 1).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: found {layout!r}, expected one of {', '.join(LAYOUTS)}")
    if num < 1:
        raise ValueError(f"num: found {num}, expected >= 1")
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ValueError(f"size: found {size}, expected (height, width) of at least 8 pixels")
    scenes = int(scenes) if scenes else max(1, math.ceil(num / FRAMES_PER_SCENE))
    if not 1 <= scenes <= num:
        raise ValueError(f"scenes: found {scenes}, expected 1..num ({num})")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: found {val_fraction}, expected a fraction in [0, 1)")
    out = Path(out_dir)
    for s in range(scenes):
        (out / f"scene_{s:03d}").mkdir(parents=True, exist_ok=True)
    jobs = [(out, layout, int(seed), i, num, scenes, (h, w)) for i in range(num)]
    start = time.perf_counter()
    n_proc = processes if processes is not None else _cpu_count() if num >= 16 else 1
    if mp.current_process().daemon:  # e.g. inside a DataLoader worker: daemons cannot start processes
        n_proc = 1
    bar = _progress(num, progress, f"synth {layout} {h}x{w}")
    if n_proc > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(n_proc) as pool:
            for _ in pool.imap_unordered(_write_frame, jobs, chunksize=max(1, min(8, num // (4 * n_proc)))):
                bar.update(1)
    else:
        for job in jobs:
            _write_frame(job)
            bar.update(1)
    bar.close()
    n_val_scenes = min(scenes - 1, max(1, round(val_fraction * scenes))) if scenes >= 2 and val_fraction > 0 else 0
    val_scenes = tuple(range(scenes - n_val_scenes, scenes))
    rows = {"train": [], "val": []}
    for i in range(num):
        s = _scene_of(i, num, scenes)
        rows["val" if s in val_scenes else "train"].append(_frame_paths(out, layout, i, s))
    train_file = out / "train.txt"
    write_annotation_file(train_file, rows["train"], relative=True)
    val_file = None
    if rows["val"]:
        val_file = out / "val.txt"
        write_annotation_file(val_file, rows["val"], relative=True)
    return SynthResult(out, layout, num, scenes, train_file, val_file, len(rows["train"]), len(rows["val"]),
                       val_scenes, time.perf_counter() - start)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame")
