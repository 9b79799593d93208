"""Procedural RGB-D scenes: indoor-like rooms rendered by vectorised ray casting, with exact metric depth.

No public depth dataset can be downloaded where this project is tested, so this module makes one. A scene is a
box room (floor, four walls, ceiling) holding furniture-like boxes, tables on legs, doors and pictures on the walls,
spheres and vertical cylinders. The image carries the cues a monocular depth model uses, each tied to the metric
geometry rather than drawn independently of it:

- perspective under an NYU-like camera prior: a hand-held camera at 1.2-1.6 m, about level (pitched a little
  down), ~58 deg field of view, mostly standing near one wall and looking across the room, in rooms of realistic
  size (3-6.5 m); the floor plane, its vanishing lines and where objects and walls meet the floor fix the scale;
- texture gradients: floors, walls and furniture carry textures of a physical scale drawn from a realistic range
  (floor tiles 0.3-0.6 m with grout, planks 0.1-0.2 m wide, wallpaper stripes, carpet, skirting boards), so
  their on-screen density and blur follow distance and surface slant;
- shading: ceiling point lights with inverse-square falloff, Lambert shading and shadow rays, plus ambient
  occlusion from the scene's signed distance field (darker room corners, contact shadows under furniture);
- occlusion: exact per-pixel nearest hits.

Depth is z-depth along the optical axis (metres), exact per pixel.

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

PATTERNS = ("plain", "checker", "stripes", "noise", "tiles", "planks")


@dataclass(frozen=True)
class Material:
    """A procedural texture at a physical scale: `pattern` mixes colours `c1`/`c2` (linear RGB) at `freq` cycles
    per metre (tiles: 1 / tile size; planks: 1 / plank width), so its density on screen follows distance."""

    pattern: str
    c1: tuple[float, float, float]
    c2: tuple[float, float, float]
    freq: float
    grain: float  # amplitude of fine albedo noise
    offset: tuple[float, float]  # texture-space offset (also selects the noise lattice region)
    gap: float = 0.0  # tiles / planks: width in metres of the darker grout or gap lines
    aspect: float = 1.0  # planks: length / width


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
    baseboard: float = 0.0  # height (m) of a skirting board along the bottom of the walls (0: none)
    baseboard_material: int = 0


@dataclass(frozen=True)
class Camera:
    position: tuple[float, float, float]
    rotation: np.ndarray  # 3x3 world-from-camera; columns: right, down, forward (OpenCV convention)
    fx: float
    fy: float
    cx: float
    cy: float


def _color(rng: np.random.Generator, sat: tuple[float, float] = (0.1, 0.6), val: tuple[float, float] = (0.25, 0.85),
           hue: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float, float]:
    """A random colour in linear RGB from HSV ranges."""
    h, s, v = rng.uniform(*hue) % 1.0, rng.uniform(*sat), rng.uniform(*val)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(float(c) ** 2.2 for c in rgb)  # type: ignore[return-value]


def _shade(c: tuple[float, float, float], k: float) -> tuple[float, float, float]:
    return tuple(float(v) * k for v in c)  # type: ignore[return-value]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def _offset(rng: np.random.Generator) -> tuple[float, float]:
    return float(rng.uniform(0, 50)), float(rng.uniform(0, 50))


def _floor_material(rng: np.random.Generator) -> Material:
    kind = rng.choice(["tiles", "planks", "carpet"], p=[0.35, 0.4, 0.25])
    if kind == "tiles":  # ceramic / stone tiles, 30-60 cm, lighter grout
        c1 = _color(rng, (0.0, 0.25), (0.45, 0.85))
        return Material("tiles", c1, _shade(c1, float(rng.uniform(0.75, 0.92))), 1.0 / float(rng.uniform(0.3, 0.6)),
                        float(rng.uniform(0.03, 0.08)), _offset(rng), gap=float(rng.uniform(0.005, 0.012)))
    if kind == "planks":  # wooden boards 10-20 cm wide, 6-10x as long, staggered
        c1 = _color(rng, (0.35, 0.65), (0.3, 0.75), hue=(0.04, 0.11))
        return Material("planks", c1, _shade(c1, float(rng.uniform(0.6, 0.85))), 1.0 / float(rng.uniform(0.1, 0.2)),
                        float(rng.uniform(0.05, 0.12)), _offset(rng), gap=float(rng.uniform(0.002, 0.005)),
                        aspect=float(rng.uniform(6, 10)))
    c1 = _color(rng, (0.05, 0.45), (0.25, 0.7))  # carpet: blotches of 20-50 cm and a fine pile
    return Material("noise", c1, _shade(c1, float(rng.uniform(0.6, 0.8))), 1.0 / float(rng.uniform(0.2, 0.5)),
                    float(rng.uniform(0.12, 0.2)), _offset(rng))


def _wall_material(rng: np.random.Generator, accent: bool = False) -> Material:
    sat, val = ((0.1, 0.5), (0.35, 0.85)) if accent else ((0.0, 0.3), (0.55, 0.95))
    c1 = _color(rng, sat, val)
    kind = rng.choice(["plain", "stripes", "noise"], p=[0.6, 0.25, 0.15])
    if kind == "stripes":  # wallpaper: stripes 8-30 cm apart
        c2 = _color(rng, sat, val) if rng.random() < 0.5 else _shade(c1, float(rng.uniform(0.7, 0.9)))
        return Material("stripes", c1, c2, 1.0 / float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.02, 0.06)),
                        _offset(rng))
    if kind == "noise":  # textured plaster
        return Material("noise", c1, _shade(c1, float(rng.uniform(0.75, 0.9))), 1.0 / float(rng.uniform(0.3, 0.8)),
                        float(rng.uniform(0.04, 0.1)), _offset(rng))
    return Material("plain", c1, c1, 1.0 / float(rng.uniform(0.5, 1.5)), float(rng.uniform(0.02, 0.06)),
                    _offset(rng))


def _object_material(rng: np.random.Generator, val: tuple[float, float] = (0.15, 0.85)) -> Material:
    kind = rng.choice(["plain", "wood", "fabric", "checker", "stripes"], p=[0.3, 0.25, 0.2, 0.1, 0.15])
    if kind == "wood":  # boards / veneer 5-15 cm wide
        c1 = _color(rng, (0.3, 0.65), (0.2, 0.7), hue=(0.03, 0.11))
        return Material("planks", c1, _shade(c1, float(rng.uniform(0.65, 0.85))), 1.0 / float(rng.uniform(0.05, 0.15)),
                        float(rng.uniform(0.06, 0.12)), _offset(rng), gap=0.002, aspect=float(rng.uniform(4, 12)))
    c1 = _color(rng, (0.05, 0.65), val)
    c2 = _color(rng, (0.05, 0.65), val) if rng.random() < 0.5 else _shade(c1, float(rng.uniform(0.4, 0.75)))
    if kind == "fabric":
        return Material("noise", c1, c2, 1.0 / float(rng.uniform(0.05, 0.25)), float(rng.uniform(0.1, 0.2)),
                        _offset(rng))
    if kind == "checker":
        return Material("checker", c1, c2, 1.0 / float(rng.uniform(0.05, 0.2)), float(rng.uniform(0.03, 0.08)),
                        _offset(rng))
    if kind == "stripes":
        return Material("stripes", c1, c2, 1.0 / float(rng.uniform(0.04, 0.2)), float(rng.uniform(0.03, 0.08)),
                        _offset(rng))
    return Material("plain", c1, c1, 1.0 / float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.02, 0.08)),
                    _offset(rng))


def random_scene(rng: np.random.Generator) -> Scene:
    """A furnished room of realistic size with physically scaled materials, objects and ceiling lights."""
    W, H, D = float(rng.uniform(3.0, 6.5)), float(rng.uniform(2.4, 3.0)), float(rng.uniform(3.0, 6.5))
    mats: list[Material] = []

    def add(m: Material) -> int:
        mats.append(m)
        return len(mats) - 1

    floor = add(_floor_material(rng))
    wall = add(_wall_material(rng))
    accent = add(_wall_material(rng, accent=True)) if rng.random() < 0.4 else wall
    if rng.random() < 0.75:
        c = _color(rng, (0.0, 0.08), (0.8, 0.97))
        ceiling = add(Material("plain", c, c, 1.0, 0.02, _offset(rng)))
    else:  # suspended ceiling: 60 cm tiles
        c = _color(rng, (0.0, 0.08), (0.75, 0.95))
        ceiling = add(Material("tiles", c, _shade(c, 0.95), 1.0 / 0.6, 0.03, _offset(rng), gap=0.02))
    walls = [wall, wall, wall, wall]
    walls[int(rng.integers(4))] = accent
    baseboard, base_mat = 0.0, 0
    if rng.random() < 0.7:
        c = _color(rng, (0.0, 0.1), (0.85, 0.97)) if rng.random() < 0.6 else \
            _color(rng, (0.3, 0.6), (0.15, 0.45), hue=(0.04, 0.1))
        baseboard, base_mat = float(rng.uniform(0.06, 0.14)), add(Material("plain", c, c, 1.0, 0.02, _offset(rng)))
    scene = Scene(size=(W, H, D), room_materials=(walls[0], walls[1], floor, ceiling, walls[2], walls[3]),
                  materials=mats, ambient=float(rng.uniform(0.06, 0.15)), noise=rng.random((64, 64)).astype(_F),
                  baseboard=baseboard, baseboard_material=base_mat)
    footprints: list[tuple[float, float, float]] = []  # (x, z, radius) on the floor

    def place(radius: float, near_wall: bool) -> Optional[tuple[float, float]]:
        for _ in range(30):
            if near_wall:  # sides 0/1: the x = 0 / x = W walls (run along z); 2/3: z = 0 / z = D
                side = int(rng.integers(4))
                t = rng.uniform(radius + 0.05, (D if side < 2 else W) - radius - 0.05)
                gap = radius + float(rng.uniform(0.02, 0.2))
                x, z = [(gap, t), (W - gap, t), (t, gap), (t, D - gap)][side]
            else:
                x, z = rng.uniform(radius + 0.3, W - radius - 0.3), rng.uniform(radius + 0.3, D - radius - 0.3)
            if all((x - fx) ** 2 + (z - fz) ** 2 > (radius + fr + 0.05) ** 2 for fx, fz, fr in footprints):
                footprints.append((float(x), float(z), radius))
                return float(x), float(z)
        return None

    def on_top(x: float, top: float, z: float, room: float) -> None:
        r = float(rng.uniform(0.05, min(0.2, room)))
        if rng.random() < 0.5:
            scene.spheres.append(Sphere((x, top + r, z), r, add(_object_material(rng))))
        else:
            scene.cylinders.append(Cylinder((x, top, z), r, float(rng.uniform(0.1, 0.45)), add(_object_material(rng))))

    for _ in range(int(rng.integers(2, 6))):  # cabinets, shelves, beds, sofas: mostly against the walls
        hx, hz = float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.5))
        hy = float(rng.uniform(0.2, 0.5)) if rng.random() < 0.5 else float(rng.uniform(0.5, 1.0))
        near = rng.random() < 0.75
        spot = place(math.hypot(hx, hz), near)
        if spot is None:
            continue
        yaw = float(rng.normal(0, 0.05)) if near else float(rng.uniform(0, math.pi))
        scene.boxes.append(Box((spot[0], hy, spot[1]), (hx, hy, hz), yaw, add(_object_material(rng))))
        if rng.random() < 0.35:
            on_top(spot[0], 2 * hy, spot[1], min(hx, hz))
    for _ in range(int(rng.integers(0, 2)) + int(rng.random() < 0.3)):  # tables on four legs
        hx, hz = float(rng.uniform(0.35, 0.8)), float(rng.uniform(0.3, 0.5))
        spot = place(math.hypot(hx, hz), rng.random() < 0.3)
        if spot is None:
            continue
        top, th, leg = float(rng.uniform(0.7, 0.78)), float(rng.uniform(0.015, 0.03)), float(rng.uniform(0.02, 0.04))
        yaw = float(rng.uniform(0, math.pi))
        m = add(_object_material(rng))
        scene.boxes.append(Box((spot[0], top - th, spot[1]), (hx, th, hz), yaw, m))
        c, s = math.cos(yaw), math.sin(yaw)
        for sx, sz in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            lx, lz = sx * (hx - 2 * leg), sz * (hz - 2 * leg)  # box frame -> world (inverse of _to_local)
            wx, wz = spot[0] + c * lx + s * lz, spot[1] - s * lx + c * lz
            scene.boxes.append(Box((wx, (top - 2 * th) / 2, wz), (leg, (top - 2 * th) / 2, leg), yaw, m))
        if rng.random() < 0.5:
            on_top(spot[0], top, spot[1], min(hx, hz) * 0.6)
    for _ in range(int(rng.integers(0, 3))):  # balls, pouffes
        r = float(rng.uniform(0.1, 0.35))
        spot = place(r, False)
        if spot is not None:
            scene.spheres.append(Sphere((spot[0], r, spot[1]), r, add(_object_material(rng))))
    for _ in range(int(rng.integers(0, 4))):  # bins, lamps, columns, plants' pots
        r = float(rng.uniform(0.08, 0.35))
        spot = place(r, rng.random() < 0.6)
        if spot is not None:
            scene.cylinders.append(Cylinder((spot[0], 0.0, spot[1]), r, float(rng.uniform(0.3, min(2.0, H - 0.3))),
                                            add(_object_material(rng))))
    panels = (["door"] if rng.random() < 0.5 else []) + ["picture"] * int(rng.integers(0, 4))
    for kind in panels:  # doors (from the floor) and pictures / windows on the walls: thin boxes
        side = int(rng.integers(4))
        span = W if side >= 2 else D
        if kind == "door":
            hw_, hh = float(rng.uniform(0.4, 0.48)), float(rng.uniform(0.98, 1.05))
            y, th, mat = hh, float(rng.uniform(0.02, 0.04)), add(_object_material(rng, val=(0.3, 0.9)))
        else:
            hw_, hh = float(rng.uniform(0.2, min(0.8, span / 4))), float(rng.uniform(0.15, 0.5))
            y, th = float(rng.uniform(max(hh + 0.7, 1.1), H - hh - 0.15)), float(rng.uniform(0.015, 0.05))
            mat = add(_object_material(rng, val=(0.1, 0.95)))
        if span < 2 * hw_ + 0.3:
            continue
        t = float(rng.uniform(hw_ + 0.1, span - hw_ - 0.1))
        center, half = [((th, y, t), (th, hh, hw_)), ((W - th, y, t), (th, hh, hw_)),
                        ((t, y, th), (hw_, hh, th)), ((t, y, D - th), (hw_, hh, th))][side]
        scene.boxes.append(Box(center, half, 0.0, mat))
    n_lights = int(rng.integers(1, 3))
    for k in range(n_lights):  # ceiling lamps
        for _ in range(20):  # not inside a tall object
            pos = (float(rng.uniform(0.25, 0.75) * W), float(H - rng.uniform(0.1, 0.4)),
                   float(rng.uniform(0.25, 0.75) * D))
            if not _inside_any(scene, np.asarray(pos), margin=0.1):
                break
        warm = float(rng.uniform(-0.05, 0.2))
        scene.lights.append(Light(pos, float(rng.uniform(3.0, 5.0)) / (1 + 0.5 * k), (1.0 + warm, 1.0, 1.0 - warm)))
    scene.materials = mats
    return scene


def random_camera(scene: Scene, rng: np.random.Generator, size: tuple[int, int]) -> Camera:
    """A hand-held camera pose (see `_random_pose`); poses whose view is mostly blocked by a nearby surface
    (median depth < 1.8 m, or over 15% of it within 1 m, on a coarse grid) are redrawn (the most open of
    20 draws is kept)."""
    best, best_med = None, -1.0
    for _ in range(20):
        cam = _random_pose(scene, rng, size)
        o, d = _camera_rays(cam, size, step=max(1, min(size) // 12))
        z = _cast(scene, o, d)[0]
        med = float(np.median(z))
        if med >= 1.8 and float((z < 1.0).mean()) <= 0.15:
            return cam
        if med > best_med:
            best, best_med = cam, med
    return best  # type: ignore[return-value]


def _random_pose(scene: Scene, rng: np.random.Generator, size: tuple[int, int]) -> Camera:
    """NYU-like: a person holding the camera at 1.2-1.6 m, about level and a little down; mostly (85%) standing
    0.3-1.3 m from one wall and looking across the room (towards its middle, give or take), otherwise anywhere
    looking anywhere."""
    W, H, D = scene.size
    h, w = size
    hfov = math.radians(float(rng.uniform(56, 62)))  # about NYU's Kinect (58 deg)
    fx = (w / 2) / math.tan(hfov / 2)
    pos, yaw = np.array([W / 2, min(1.4, H - 0.3), D / 2]), 0.0
    for _ in range(100):
        if rng.random() < 0.85:
            side = int(rng.integers(4))  # 0: at x = 0, facing +x; 1: x = W, -x; 2: z = 0, +z; 3: z = D, -z
            t = float(rng.uniform(0.2, 0.8)) * (D if side < 2 else W)
            off = float(rng.uniform(0.3, 1.3))
            x, z = [(off, t), (W - off, t), (t, off), (t, D - off)][side]
            facing = [math.pi / 2, -math.pi / 2, 0.0, math.pi][side]
            to_centre = math.atan2(W / 2 - x, D / 2 - z)
            turn = (to_centre - facing + math.pi) % (2 * math.pi) - math.pi
            yaw = facing + turn * float(rng.uniform(0.5, 1.0)) + float(rng.normal(0, 0.25))
        else:
            x, z = float(rng.uniform(0.4, W - 0.4)), float(rng.uniform(0.4, D - 0.4))
            yaw = float(rng.uniform(-math.pi, math.pi))
        pos = np.array([x, rng.uniform(1.2, min(1.6, H - 0.3)), z])
        if not _inside_any(scene, pos, margin=0.3):
            break
    pitch = float(np.clip(rng.normal(-0.2, 0.06), -0.4, 0.0))  # 11 deg down on average, never up
    roll = float(rng.normal(0, 0.025))
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


def _hit_exact(o: Vec, d: Vec, ob, detail: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
    if isinstance(ob, Box):
        return _hit_box(o, d, ob, detail)
    if isinstance(ob, Sphere):
        return _hit_sphere(o, d, ob), None
    return _hit_cylinder(o, d, ob, detail)


def _bounds(ob) -> tuple[tuple[float, float, float], float]:
    """A bounding sphere (centre, radius) of an object, slightly inflated."""
    if isinstance(ob, Box):
        centre, radius = ob.center, math.sqrt(sum(h * h for h in ob.half))
    elif isinstance(ob, Sphere):
        centre, radius = ob.center, ob.radius
    else:
        centre, radius = (ob.base[0], ob.base[1] + ob.height / 2, ob.base[2]), math.hypot(ob.radius, ob.height / 2)
    return centre, radius * 1.01 + 1e-3


def _hit(o: Vec, d: Vec, ob, detail: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(t, part) as `_hit_exact`, computed only for the rays that pass through the object's bounding sphere
    (the same values, since each ray is computed alone; most objects cover a small part of the view)."""
    if isinstance(ob, Sphere):
        return _hit_exact(o, d, ob, detail)
    centre, radius = _bounds(ob)
    oc = [np.float32(centre[k]) - o[k] for k in range(3)]
    dd = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = d[0] * oc[0] + d[1] * oc[1] + d[2] * oc[2]
    cc = oc[0] * oc[0] + oc[1] * oc[1] + oc[2] * oc[2]
    r2 = np.float32(radius * radius)
    near = (cc * dd - b * b <= r2 * dd) & ((b > 0) | (cc <= r2))
    idx = np.flatnonzero(near)
    if len(idx) > 0.5 * len(near):
        return _hit_exact(o, d, ob, detail)
    t = np.full(len(near), np.inf, _F)
    part = np.zeros(len(near), np.int32) if detail and not isinstance(ob, Sphere) else None
    if len(idx):
        o_sub = tuple(c[idx] if isinstance(c, np.ndarray) else c for c in o)
        t_sub, p_sub = _hit_exact(o_sub, tuple(c[idx] for c in d), ob, detail)
        t[idx] = t_sub
        if part is not None and p_sub is not None:
            part[idx] = p_sub
    return t, part


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

    # room surfaces: inward normals; texture coordinates from the two in-plane world axes (floor: x, z)
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
    if scene.baseboard > 0:  # skirting board along the bottom of the four walls
        mat[r & (room_face != 2) & (room_face != 3) & (p[1] < scene.baseboard)] = scene.baseboard_material
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

    # lighting: ambient (hemisphere-weighted) with ambient occlusion, plus ceiling lamps with inverse-square
    # falloff, Lambert's cosine and shadow rays; direct light is also dimmed a little in occluded creases (the
    # lamps are not points), which gives soft contact shadows under and beside furniture
    ao = _ambient_occlusion(scene, p, normal)
    irr = scene.ambient * (0.75 + 0.25 * normal[1]) * ao
    color = np.repeat(irr[:, None].astype(_F), 3, axis=1)
    soft = 0.45 + 0.55 * ao
    origin = tuple(p[j] + normal[j] * np.float32(2e-3) for j in range(3))
    for light in scene.lights:
        to_l = tuple(np.float32(light.position[j]) - origin[j] for j in range(3))
        dist2 = to_l[0] ** 2 + to_l[1] ** 2 + to_l[2] ** 2
        ndl = np.maximum(normal[0] * to_l[0] + normal[1] * to_l[1] + normal[2] * to_l[2], 0) / np.sqrt(dist2)
        lit = ndl > 0
        vis = np.ones(n_pix, _F)
        if lit.any():
            blocked = _occluded(tuple(c[lit] for c in origin), tuple(c[lit] for c in to_l), scene)
            vis[lit] = np.where(blocked, np.float32(0.1), np.float32(1))
        e = light.intensity * ndl * vis * soft / (dist2 + 0.3)
        color += e[:, None] * np.asarray(light.color, _F)
    rgb_lin = albedo * color
    # auto exposure, then display gamma
    rgb_lin *= 0.85 / max(float(np.percentile(rgb_lin.max(axis=1), 97)), 1e-3)
    rgb = np.clip(rgb_lin, 0, 1) ** (1 / 2.2)
    if rng is not None:
        rgb = rgb + rng.normal(0, 0.008, rgb.shape).astype(_F)
    rgb8 = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3)
    return rgb8, t.reshape(h, w).astype(np.float32)


_AO_STEPS = ((0.04, 0.5), (0.1, 0.3), (0.22, 0.15), (0.4, 0.08))  # (distance along the normal, weight)


def _ambient_occlusion(scene: Scene, p: Vec, normal: list) -> np.ndarray:
    """Ambient occlusion from the scene's signed distance field: at a few points along the normal, how much
    closer than expected the nearest other surface is (room corners and edges, under and beside furniture)."""
    reach = max(delta for delta, _ in _AO_STEPS)
    nearby = []  # objects with the points close enough to them to matter (the rest are at least `reach` away)
    for ob in _objects(scene):
        centre, radius = _bounds(ob)
        idx = _near(p, centre, radius + 2 * reach)
        if idx is not None:
            nearby.append((ob, idx))
    occ = np.zeros(len(p[0]), _F)
    for delta, weight in _AO_STEPS:
        q = tuple(p[j] + normal[j] * np.float32(delta) for j in range(3))
        dist = np.full(len(q[0]), np.float32(delta))
        for k in range(3):  # the room's planes
            dist = np.minimum(dist, np.minimum(q[k], np.float32(scene.size[k]) - q[k]))
        for ob, idx in nearby:
            dist[idx] = np.minimum(dist[idx], _sdf(ob, tuple(c[idx] for c in q)))
        occ += weight * np.maximum(delta - dist, 0) / delta
    return np.clip(1.0 - 1.1 * occ, 0.0, 1.0).astype(_F)


def _sdf(ob, q: Vec) -> np.ndarray:
    """Signed distance from points q to an object's surface (negative inside)."""
    if isinstance(ob, Box):
        lq = _to_local(q, ob)
        e = [np.abs(lq[j]) - np.float32(ob.half[j]) for j in range(3)]
        out = np.sqrt(sum(np.maximum(v, 0) ** 2 for v in e))
        return out + np.minimum(np.maximum(np.maximum(e[0], e[1]), e[2]), 0)
    if isinstance(ob, Sphere):
        return np.sqrt(sum((q[j] - np.float32(ob.center[j])) ** 2 for j in range(3))) - np.float32(ob.radius)
    mid = ob.base[1] + ob.height / 2
    er = np.sqrt((q[0] - np.float32(ob.base[0])) ** 2 + (q[2] - np.float32(ob.base[2])) ** 2) - np.float32(ob.radius)
    ey = np.abs(q[1] - np.float32(mid)) - np.float32(ob.height / 2)
    return np.minimum(np.maximum(er, ey), 0) + np.sqrt(np.maximum(er, 0) ** 2 + np.maximum(ey, 0) ** 2)


def _near(q: Vec, centre: tuple[float, float, float], radius: float) -> Optional[np.ndarray]:
    """Indices of the points within `radius` of `centre` (None when there are none)."""
    d2 = (q[0] - np.float32(centre[0])) ** 2 + (q[1] - np.float32(centre[1])) ** 2 + (q[2] - np.float32(centre[2])) ** 2
    idx = np.flatnonzero(d2 < np.float32(radius * radius))
    return idx if len(idx) else None


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


def _cell(noise: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """A pseudo-random value in [0, 1) per integer cell (i, j), from the lattice."""
    n = noise.shape[0]
    return noise[(j * 7 + i // n) % n, (i * 13 + j // n) % n]


def _lines(coord: np.ndarray, period: float, width: float, footprint: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of lines `width` wide every `period` metres along `coord`, box-filtered by the pixel
    footprint (so that lines too thin to resolve fade to their mean coverage instead of aliasing)."""
    dist = np.abs(coord / period - np.round(coord / period)) * period  # metres to the nearest line centre
    sharp = np.clip((width / 2 - dist) / np.maximum(footprint, 1e-4) + 0.5, 0, 1)
    a = np.clip(1.0 - footprint / period * 1.5, 0, 1)  # lines closer than ~1.5 px: their mean coverage
    return sharp * a + min(width / period, 1.0) * (1 - a)


def _albedo(scene: Scene, mat: np.ndarray, uv: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    out = np.empty((len(mat), 3), _F)
    for k in np.unique(mat):
        m = mat == k
        M = scene.materials[int(k)]
        u = uv[m, 0] + M.offset[0]
        v = uv[m, 1] + M.offset[1]
        fp = footprint[m]
        fw = fp * M.freq  # texture cycles per pixel
        fade = np.clip(1.0 - 1.5 * fw, 0.0, 1.0)  # too fine to resolve: fade to the mean colour
        sharp = 1.0 / np.maximum(fw * 4.0, 0.02)
        lines = None
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
        elif M.pattern == "tiles":  # square tiles of 1/freq m, each its own shade, with grout lines
            size = 1.0 / M.freq
            mix = _cell(scene.noise, np.floor(u / size).astype(np.int64), np.floor(v / size).astype(np.int64))
            lines = np.maximum(_lines(u, size, M.gap, fp), _lines(v, size, M.gap, fp))
        elif M.pattern == "planks":  # boards 1/freq wide along v, aspect x as long, staggered, with grain
            width = 1.0 / M.freq
            length = width * M.aspect
            row = np.floor(v / width).astype(np.int64)
            shift = _cell(scene.noise, row, row * 0 + 3) * length
            col = np.floor((u + shift) / length).astype(np.int64)
            board = _cell(scene.noise, col, row)
            grain = _lattice(scene.noise, u * 1.5 + row * 3.1, v * 40.0)
            mix = np.clip(0.7 * board + 0.45 * (grain - 0.5) * np.clip(1 - 30 * fp, 0, 1) + 0.15, 0, 1)
            lines = np.maximum(_lines(v, width, M.gap, fp), _lines(u + shift, length, M.gap * 1.5, fp))
        else:  # plain: a mostly uniform colour with soft blotches
            mix = 0.15 * _lattice(scene.noise, u * M.freq * 0.3, v * M.freq * 0.3)
        if M.pattern != "plain":
            mix = mix * fade + 0.5 * (1 - fade)
        grain = 1.0 + M.grain * (_lattice(scene.noise, u * 40 + 3, v * 40 + 7) - 0.5) * 2 * \
            np.clip(1.0 - 40 * fp, 0, 1)
        c1, c2 = np.asarray(M.c1, _F), np.asarray(M.c2, _F)
        col = (c1 * (1 - mix[:, None]) + c2 * mix[:, None]) * grain[:, None]
        if lines is not None:  # grout: lighter on tiles, dark gaps between planks
            tone = np.float32(1.25 if M.pattern == "tiles" else 0.45)
            col = col * (1 + (tone - 1) * lines[:, None])
        out[m] = col
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
