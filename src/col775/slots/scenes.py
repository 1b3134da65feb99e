"""CLEVRTex-like scenes with exact per-pixel object masks, generated with numpy alone.

A pinhole camera looks down at a textured floor that meets a textured backdrop at a
horizon. Spheres, cubes and cylinders stand on the floor, each wearing a solid procedural
texture (noise, marble, stripes, checks, dots, rock, tiles, rings), lit by one directional
light that casts shadows. Every pixel's ray is intersected with every object and the
nearest hit wins: a per-pixel depth test, which is drawing back to front made exact, so the
mask holds precisely the object each pixel shows (0 for floor and backdrop, ids 1.. for
the objects in `Scene.objects` order).

Colour alone should not separate the objects, as in CLEVRTex: each scene draws a palette,
the floor and many objects take their colours (and often their pattern) from it, so an
object's colours recur on the floor and on other objects.

The "simple" style (`SCENE_STYLES`) is the easy variant, like Multi-dSprites or CLEVR: a steeper
camera, one plain background colour per scene (no texture, shadow or haze) and objects of one
saturated colour each, shaded only by the light's angle, so colour separates the objects.

`render_scene(seed)` is the one-call entry point; `sample_scene` and `draw_scene` are the
two halves for anyone who wants to edit a scene (tests move objects to check occlusion).
`write_scene_folder` writes the course's folder layout (`images/{train,val}/*.png` and
`masks/{train,val}/*.png`, masks coloured with `MASK_PALETTE`, background black), which
`col775.slots.data` reads back.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("sphere", "cube", "cylinder")
# textured: CLEVRTex-like (the default); simple: solid colours on one plain background (Multi-dSprites/CLEVR-like)
SCENE_STYLES = ("textured", "simple")
PATTERNS = ("noise", "marble", "stripes", "checks", "dots", "rock", "tiles", "rings")

_NOISE_PERIOD = 32  # lattice cells per side of the periodic value-noise table
_EPS = 1e-6


def _mask_palette() -> np.ndarray:
    """255 distinct non-black colours: 12 easy-to-tell-apart ones, then colours coded by id."""
    first = [
        (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
        (255, 128, 0), (128, 0, 255), (0, 128, 64), (255, 255, 255), (128, 64, 0), (255, 160, 200),
    ]
    coded = [(k, 255 - k, 77) for k in range(len(first) + 1, 256)]
    return np.array([(0, 0, 0)] + first + coded, dtype=np.uint8)


# MASK_PALETTE[k] is the RGB colour of object id k in written mask files; id 0 (background) is black.
MASK_PALETTE = _mask_palette()


@dataclass
class Material:
    """A two-colour solid texture: `pattern` gives t in [0, 1] at a 3-D point, colour = mix(colors, t)."""

    pattern: str
    colors: np.ndarray  # (2, 3) RGB in [0, 1]
    frequency: float  # pattern cells per world unit
    rotation: np.ndarray  # (3, 3) orientation of the texture in the object's frame
    offset: np.ndarray  # (3,) shift in texture space, so equal materials still differ
    shininess: float = 0.0  # weight of the specular highlight; 0 is matte


@dataclass
class SceneObject:
    """A solid standing on the floor (y = 0) at floor point (x, z)."""

    shape: str
    x: float
    z: float
    size: float  # sphere / cylinder radius, cube half-edge
    height: float  # cylinder height; spheres and cubes are 2 * size tall
    angle: float  # rotation about the vertical axis (cubes)
    material: Material

    @property
    def footprint_radius(self) -> float:
        """Radius of the smallest vertical cylinder holding the object (for spacing)."""
        return self.size * math.sqrt(2.0) if self.shape == "cube" else self.size

    @property
    def top(self) -> float:
        return self.height if self.shape == "cylinder" else 2.0 * self.size


@dataclass
class Camera:
    """At (0, height, 0) looking along +z, tilted down by `pitch`; square image with field of view `fov`."""

    height: float
    pitch: float  # radians
    fov: float  # radians, full angle

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(origin, forward, right, up) as (3,) arrays."""
        sp, cp = math.sin(self.pitch), math.cos(self.pitch)
        origin = np.array([0.0, self.height, 0.0])
        return origin, np.array([0.0, -sp, cp]), np.array([1.0, 0.0, 0.0]), np.array([0.0, cp, sp])

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (M, 3) to screen (M, 2) in [-1, 1] (x right, y up); NaN behind the camera."""
        origin, forward, right, up = self.basis()
        rel = points - origin
        depth = rel @ forward
        half = math.tan(self.fov / 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            screen = np.stack([rel @ right, rel @ up], axis=1) / (depth[:, None] * half)
        screen[depth <= 0] = np.nan
        return screen

    def rays(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Origin (1, 3) and unit directions (size*size, 3) through pixel centres, row-major."""
        origin, forward, right, up = self.basis()
        half = math.tan(self.fov / 2)
        coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
        sx = coords[None, :, None] * half
        sy = -coords[:, None, None] * half
        dirs = forward + sx * right + sy * up  # (size, size, 3)
        dirs = dirs.reshape(-1, 3)
        return origin[None, :], dirs / np.linalg.norm(dirs, axis=1, keepdims=True)

    def pixel_angle(self, size: int) -> float:
        """Angular width of one pixel at the image centre (radians), for texture anti-aliasing."""
        return 2.0 * math.tan(self.fov / 2) / size


@dataclass
class Scene:
    camera: Camera
    light: np.ndarray  # (3,) unit vector pointing towards the light
    floor: Material
    backdrop: Material
    wall_distance: float  # the backdrop is the plane z = wall_distance
    objects: list[SceneObject]
    noise: np.ndarray = field(repr=False)  # (P, P, P) float32 periodic value-noise lattice in [0, 1]


# --------------------------------------------------------------------------- intersections
# Each takes ray origins (M, 3) or (1, 3) and unit directions (M, 3) and returns the distance
# to the first hit beyond a small epsilon, or +inf where the ray misses.


def _intersect_sphere(obj: SceneObject, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    oc = origins - np.array([obj.x, obj.size, obj.z])
    b = np.einsum("ij,ij->i", np.broadcast_to(oc, dirs.shape), dirs)
    c = np.einsum("ij,ij->i", oc, oc) - obj.size**2
    disc = b * b - c
    root = np.sqrt(np.maximum(disc, 0.0))
    near, far = -b - root, -b + root
    t = np.where(near > _EPS, near, np.where(far > _EPS, far, np.inf))
    return np.where(disc >= 0, t, np.inf)


def _intersect_cylinder(obj: SceneObject, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    ox, oy, oz = origins[:, 0] - obj.x, origins[:, 1], origins[:, 2] - obj.z
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = np.maximum(dx * dx + dz * dz, 1e-12)
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - obj.size**2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    best = np.full(dirs.shape[0], np.inf)
    for t in ((-b - root) / a, (-b + root) / a):
        y = oy + t * dy
        ok = (disc >= 0) & (t > _EPS) & (y >= 0.0) & (y <= obj.height)
        best = np.where(ok & (t < best), t, best)
    with np.errstate(divide="ignore", invalid="ignore"):
        for plane in (obj.height, 0.0):  # top and bottom caps
            t = (plane - oy) / dy
            rx, rz = ox + t * dx, oz + t * dz
            ok = (t > _EPS) & (rx * rx + rz * rz <= obj.size**2)
            best = np.where(ok & (t < best), t, best)
    return best


def _cube_frame(obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    """Centre (3,) and rotation R (3, 3) taking cube-local vectors to world vectors."""
    ca, sa = math.cos(obj.angle), math.sin(obj.angle)
    rotation = np.array([[ca, 0.0, sa], [0.0, 1.0, 0.0], [-sa, 0.0, ca]])
    return np.array([obj.x, obj.size, obj.z]), rotation


def _intersect_cube(obj: SceneObject, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    centre, rotation = _cube_frame(obj)
    local_o = (origins - centre) @ rotation  # row vectors: v @ R == R^T v
    local_d = dirs @ rotation
    safe = np.where(np.abs(local_d) < 1e-12, 1e-12, local_d)
    t1 = (-obj.size - local_o) / safe
    t2 = (obj.size - local_o) / safe
    t_near = np.minimum(t1, t2).max(axis=1)
    t_far = np.maximum(t1, t2).min(axis=1)
    t = np.where(t_near > _EPS, t_near, t_far)
    return np.where((t_far >= t_near) & (t > _EPS), t, np.inf)


_INTERSECT = {"sphere": _intersect_sphere, "cylinder": _intersect_cylinder, "cube": _intersect_cube}


def _hit_distance(obj: SceneObject, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance along each ray to `obj` (+inf on a miss); exact tests only for rays near its bounding sphere."""
    radius = math.hypot(obj.footprint_radius, obj.top / 2) * 1.01
    oc = origins - _object_centre(obj)
    if len(oc) == 1:
        b = dirs @ oc[0]
        c = float(oc[0] @ oc[0]) - radius**2
    else:
        b = np.einsum("ij,ij->i", oc, dirs)
        c = np.einsum("ij,ij->i", oc, oc) - radius**2
    disc = b * b - c
    near = np.flatnonzero((disc >= 0) & (np.sqrt(np.maximum(disc, 0.0)) - b > _EPS))
    t = np.full(len(dirs), np.inf)
    if len(near):
        t[near] = _INTERSECT[obj.shape](obj, origins if len(origins) == 1 else origins[near], dirs[near])
    return t


def _object_normals(obj: SceneObject, points: np.ndarray) -> np.ndarray:
    """Outward unit normals (M, 3) at surface points (M, 3) of `obj`."""
    if obj.shape == "sphere":
        return (points - np.array([obj.x, obj.size, obj.z])) / obj.size
    if obj.shape == "cube":
        centre, rotation = _cube_frame(obj)
        local = (points - centre) @ rotation
        axis = np.abs(local).argmax(axis=1)
        normal = np.zeros_like(local)
        normal[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
        return normal @ rotation.T
    radial = points - np.array([obj.x, 0.0, obj.z])
    radial[:, 1] = 0.0
    radius = np.linalg.norm(radial, axis=1)
    tol = 1e-6 * max(obj.height, obj.size)
    side = radius >= obj.size * (1.0 - 1e-6)
    normal = np.zeros_like(points)
    normal[:, 1] = np.where(points[:, 1] > obj.height / 2, 1.0, -1.0)
    cap = (np.abs(points[:, 1] - obj.height) < tol) | (np.abs(points[:, 1]) < tol)
    use_side = side & ~(cap & (radius < obj.size * (1.0 - 1e-4)))
    normal[use_side] = radial[use_side] / np.maximum(radius[use_side, None], _EPS)
    return normal


def _object_centre(obj: SceneObject) -> np.ndarray:
    return np.array([obj.x, obj.top / 2, obj.z])


# ------------------------------------------------------------------------------- textures


def _value_noise(table: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Smooth periodic value noise in [0, 1] at points p (M, 3), trilinear on the lattice `table`."""
    n = table.shape[0]
    cell = np.floor(p)
    f = p - cell
    f = f * f * (3.0 - 2.0 * f)
    i = cell.astype(np.int32) & (n - 1)
    j = (i + 1) & (n - 1)
    flat = table.ravel()
    x0, y0, z0 = i[:, 0] * n * n, i[:, 1] * n, i[:, 2]
    x1, y1, z1 = j[:, 0] * n * n, j[:, 1] * n, j[:, 2]
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]

    def lerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
        return a + (b - a) * w

    c00 = lerp(flat[x0 + y0 + z0], flat[x1 + y0 + z0], fx)
    c10 = lerp(flat[x0 + y1 + z0], flat[x1 + y1 + z0], fx)
    c01 = lerp(flat[x0 + y0 + z1], flat[x1 + y0 + z1], fx)
    c11 = lerp(flat[x0 + y1 + z1], flat[x1 + y1 + z1], fx)
    return lerp(lerp(c00, c10, fy), lerp(c01, c11, fy), fz)


# Fixed per-octave shifts (irrational-ish) so octaves of the periodic lattice do not line up.
_OCTAVE_SHIFT = np.array(
    [[0.0, 0.0, 0.0], [5.3, 1.7, 9.1], [2.9, 7.7, 3.3], [8.1, 4.4, 6.6], [1.2, 9.9, 2.5]], dtype=np.float32
)


def _fbm(table: np.ndarray, p: np.ndarray, footprint: np.ndarray, octaves: int = 4) -> np.ndarray:
    """Fractal noise in [0, 1]; octaves finer than a pixel fade to their mean (cheap anti-aliasing)."""
    total = np.zeros(len(p), dtype=p.dtype)
    amplitude, frequency, weight_sum = 0.5, 1.0, 0.0
    for k in range(octaves):
        fade = _fade(footprint * frequency)
        if not fade.any():
            total += amplitude * 0.5
        else:
            total += amplitude * (0.5 + fade * (_value_noise(table, p * frequency + _OCTAVE_SHIFT[k]) - 0.5))
        weight_sum += amplitude
        amplitude *= 0.5
        frequency *= 2.0
    return total / weight_sum


def _fade(cycles_per_pixel: np.ndarray) -> np.ndarray:
    """1 where a pattern is well above pixel scale, falling to 0 as a cycle shrinks to one pixel."""
    return np.clip(2.0 - 2.5 * cycles_per_pixel, 0.0, 1.0)


def _hash3(cells: np.ndarray) -> np.ndarray:
    """A pseudo-random value in [0, 1) per integer cell (M, 3)."""
    c = cells.astype(np.int64)
    h = (c[:, 0] * 73856093) ^ (c[:, 1] * 19349663) ^ (c[:, 2] * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF) / 65536.0


def _pattern(name: str, table: np.ndarray, q: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Pattern value t in [0, 1] at texture-space points q (M, 3); footprint = pixel size in texture units."""
    fade = _fade(footprint)
    if name == "noise":
        return _fbm(table, q, footprint)
    if name == "rock":  # ridged turbulence, like the rocky floors of CLEVRTex
        ridged = 1.0 - np.abs(2.0 * _fbm(table, q, footprint, octaves=5) - 1.0)
        return ridged**2
    if name == "marble":
        wave = np.sin(2.0 * np.pi * q[:, 0] + 7.0 * _fbm(table, q * 0.5, footprint * 0.5))
        return 0.5 + 0.5 * fade * wave
    if name == "stripes":
        return 0.5 + 0.5 * fade * np.tanh(4.0 * np.sin(2.0 * np.pi * q[:, 0]))
    if name == "checks":
        parity = (np.floor(q).sum(axis=1) % 2).astype(float)
        return 0.5 + fade * (parity - 0.5)
    if name == "dots":
        offset = q - np.floor(q) - 0.5
        inside = np.clip((0.32 - np.linalg.norm(offset, axis=1)) * 12.0 + 0.5, 0.0, 1.0)
        return 0.5 + fade * (inside - 0.5)
    if name == "tiles":  # staggered tiles with dark grout and a random shade per tile
        row = np.floor(q[:, 2])
        u = q[:, 0] + 0.5 * (row % 2)
        shade = _hash3(np.stack([np.floor(u), row, np.floor(q[:, 1])], axis=1))
        grout = (u - np.floor(u) < 0.08) | (q[:, 2] - row < 0.12)
        value = np.where(grout, 0.0, 0.35 + 0.65 * shade)
        return 0.5 + fade * (value - 0.5)
    if name == "rings":  # wood-like growth rings around the texture's y axis
        radius = np.hypot(q[:, 0], q[:, 2]) + 0.6 * _fbm(table, q, footprint)
        return 0.5 + 0.5 * fade * np.sin(2.0 * np.pi * radius * 2.0)
    raise ValueError(f"unknown pattern {name!r}; choose one of {PATTERNS}")


def _shade_material(
    material: Material, table: np.ndarray, local: np.ndarray, footprint: np.ndarray
) -> np.ndarray:
    """Albedo (M, 3) of `material` at object-frame points `local` (M, 3)."""
    # Textures are smooth and clipped to [0, 1], so float32 is plenty and about 3x faster than float64.
    q = ((local @ material.rotation.T) * material.frequency + material.offset).astype(np.float32)
    footprint = footprint.astype(np.float32)
    t = _pattern(material.pattern, table, q, footprint * material.frequency)
    grain = _value_noise(table, q * 6.0 + 3.1) - 0.5  # fine surface grain on top of the pattern
    t = np.clip(t + 0.12 * grain * _fade(footprint * material.frequency * 6.0), 0.0, 1.0)
    c0, c1 = material.colors
    return c0 + t[:, None] * (c1 - c0)


# ------------------------------------------------------------------------------ rendering


def _trace(scene: Scene, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest object hit per ray: distance (M,) (+inf for none) and id (M,) (0 for none, k+1 for objects[k])."""
    t_best = np.full(dirs.shape[0], np.inf)
    ids = np.zeros(dirs.shape[0], dtype=np.int64)
    for k, obj in enumerate(scene.objects):
        t = _hit_distance(obj, origins, dirs)
        nearer = t < t_best
        t_best = np.where(nearer, t, t_best)
        ids[nearer] = k + 1
    return t_best, ids


def _background_distance(scene: Scene, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the floor or backdrop (M,) and whether the backdrop is the one hit (M,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dirs[:, 1] < 0, -origin[0, 1] / dirs[:, 1], np.inf)
        t_wall = np.where(dirs[:, 2] > 0, (scene.wall_distance - origin[0, 2]) / dirs[:, 2], np.inf)
    wall = t_wall < t_floor
    return np.where(wall, t_wall, t_floor), wall


def _first_hits(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What each pixel's ray meets first: origin (1, 3), directions (P, 3), distance (P,),
    ids (P,) (0 for floor or backdrop, k + 1 for objects[k]) and whether the backdrop is hit (P,)."""
    origin, dirs = scene.camera.rays(size)
    t_bg, wall = _background_distance(scene, origin, dirs)
    t_obj, ids = _trace(scene, origin, dirs)
    ids[t_bg < t_obj] = 0
    return origin, dirs, np.where(ids > 0, t_obj, t_bg), ids, wall


def object_ids(scene: Scene, size: int) -> np.ndarray:
    """The mask alone (size, size) uint8: geometry only, no shading (cheap)."""
    return _first_hits(scene, size)[3].reshape(size, size).astype(np.uint8)


def draw_scene(scene: Scene, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Render `scene`: image (size, size, 3) uint8 and mask (size, size) uint8 with ids 0..len(objects)."""
    if len(scene.objects) > 255:
        raise ValueError(f"a uint8 mask holds at most 255 objects, the scene has {len(scene.objects)}")
    origin, dirs, t, ids, wall = _first_hits(scene, size)
    points = origin + t[:, None] * dirs  # (P, 3) surface point seen by each pixel
    albedo, normals, shininess = _surfaces(scene, size, dirs, t, points, ids, wall)
    light = scene.light
    lit = _lit_fraction(scene, points, normals)
    diffuse = np.clip(normals @ light, 0.0, 1.0) * lit
    halfway = light - dirs
    halfway /= np.linalg.norm(halfway, axis=1, keepdims=True)
    specular = shininess * np.clip((normals * halfway).sum(axis=1), 0.0, 1.0) ** 40 * lit
    ambient = 0.38 * _contact_shadow(scene, points, ids)
    colour = albedo * (ambient + 0.85 * diffuse)[:, None] + specular[:, None]
    haze = 1.0 - np.exp(-t / 150.0)  # a little aerial perspective towards the horizon
    colour = colour + haze[:, None] * (np.array([0.75, 0.75, 0.78]) - colour) * 0.6
    image = (np.clip(colour, 0.0, 1.0) ** (1 / 1.25) * 255.0 + 0.5).astype(np.uint8)
    return image.reshape(size, size, 3), ids.reshape(size, size).astype(np.uint8)


def _surfaces(
    scene: Scene, size: int, dirs: np.ndarray, t: np.ndarray, points: np.ndarray, ids: np.ndarray, wall: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Albedo (P, 3), unit normal (P, 3) and shininess (P,) of the surface each pixel sees."""
    albedo = np.empty_like(points)
    normals = np.empty_like(points)
    shininess = np.zeros(len(points))
    pixel_world = t * scene.camera.pixel_angle(size)  # pixel width in world units at the hit
    planes = (((ids == 0) & ~wall, scene.floor, (0.0, 1.0, 0.0)), ((ids == 0) & wall, scene.backdrop, (0.0, 0.0, -1.0)))
    for selected, material, normal in planes:
        normals[selected] = normal
        grazing = np.maximum(np.abs(dirs[selected] @ np.array(normal)), 0.15)
        albedo[selected] = _shade_material(material, scene.noise, points[selected], pixel_world[selected] / grazing)
    for k, obj in enumerate(scene.objects):
        selected = ids == k + 1
        if not selected.any():
            continue
        normal = _object_normals(obj, points[selected])
        normals[selected] = normal
        grazing = np.maximum(np.abs(np.einsum("ij,ij->i", dirs[selected], normal)), 0.15)
        local = points[selected] - _object_centre(obj)
        albedo[selected] = _shade_material(obj.material, scene.noise, local, pixel_world[selected] / grazing)
        shininess[selected] = obj.material.shininess
    return albedo, normals, shininess


def _lit_fraction(scene: Scene, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """1 where the light reaches a point, 0 where an object blocks it (hard shadows)."""
    facing = normals @ scene.light > 0
    lit = np.ones(len(points))
    if not scene.objects or not facing.any():
        return lit
    origins = points[facing] + normals[facing] * 1e-4
    dirs = np.broadcast_to(scene.light, origins.shape)
    blocked = np.zeros(len(origins), dtype=bool)
    for obj in scene.objects:
        blocked |= np.isfinite(_hit_distance(obj, origins, dirs))
    lit[np.flatnonzero(facing)[blocked]] = 0.0
    return lit


def _contact_shadow(scene: Scene, points: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Ambient darkening of the floor right around each object's base, so objects sit on the floor."""
    occlusion = np.ones(len(points))
    on_floor = (ids == 0) & (points[:, 1] < 1e-3)
    if not on_floor.any():
        return occlusion
    floor_points = points[on_floor]
    factor = np.ones(len(floor_points))
    for obj in scene.objects:
        gap = np.hypot(floor_points[:, 0] - obj.x, floor_points[:, 2] - obj.z) - obj.footprint_radius * 0.9
        factor *= 1.0 - 0.6 * np.exp(-np.maximum(gap, 0.0) / (0.25 * obj.size))
    occlusion[on_floor] = factor
    return occlusion


# ------------------------------------------------------------------------------- sampling


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _palette(rng: np.random.Generator) -> list[np.ndarray]:
    """Six related colours around one base hue, from dark to light: the scene's shared colour family."""
    hue = rng.random()
    sat = rng.uniform(0.1, 0.9)
    return [
        _hsv(hue + rng.normal(0, 0.06), sat + rng.normal(0, 0.15), v)
        for v in np.sort(rng.uniform(0.1, 1.0, size=6))
    ]


def _material(
    rng: np.random.Generator, pattern: str, colors: tuple[np.ndarray, np.ndarray], frequency: float
) -> Material:
    return Material(
        pattern=pattern,
        colors=np.stack(colors),
        frequency=frequency,
        rotation=_random_rotation(rng),
        offset=rng.uniform(0, _NOISE_PERIOD, size=3),
        shininess=float(rng.choice([0.0, 0.0, 0.25, 0.6])),
    )


def _object_material(
    rng: np.random.Generator, palette: list[np.ndarray], floor: Material, size: float
) -> Material:
    """Mostly the scene's palette (and often the floor's pattern), sometimes a colour of its own."""
    pattern = floor.pattern if rng.random() < 0.3 else str(rng.choice(PATTERNS))
    i, j = rng.choice(len(palette), size=2, replace=False)
    colors = (palette[i], palette[j])
    if rng.random() < 0.35:  # one colour of its own, the other still from the palette
        colors = (palette[i], _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 1.0)))
    frequency = rng.uniform(1.2, 3.5) / size  # a few pattern cells across the object
    return _material(rng, pattern, colors, frequency)


def _floor_point(camera: Camera, sx: float, sy: float) -> np.ndarray | None:
    """Where the ray through screen point (sx, sy) meets the floor, or None above the horizon."""
    origin, forward, right, up = camera.basis()
    half = math.tan(camera.fov / 2)
    d = forward + sx * half * right + sy * half * up
    if d[1] >= -1e-6:
        return None
    return origin + (-origin[1] / d[1]) * d


def _fits_in_frame(camera: Camera, obj: SceneObject, margin: float = 0.97, min_height: float = 0.12) -> bool:
    """Whole object inside the frame, and at least `min_height` of the frame tall (no specks far away)."""
    r = obj.footprint_radius
    corners = np.array(
        [[obj.x + dx, y, obj.z + dz] for dx in (-r, r) for dz in (-r, r) for y in (0.0, obj.top)]
    )
    screen = camera.project(corners)
    if not np.all(np.isfinite(screen)) or np.any(np.abs(screen) > margin):
        return False
    return bool(screen[:, 1].max() - screen[:, 1].min() >= 2.0 * min_height)


def _place_objects(
    rng: np.random.Generator, camera: Camera, wall_distance: float, floor: Material, count: int,
    dress: Callable[[float], Material], min_height: float = 0.12,
) -> list[SceneObject]:
    """Up to `count` non-intersecting objects fully inside the frame (rejection sampling), each at least
    `min_height` of the frame tall; `dress(size)` gives an accepted object its material."""
    objects: list[SceneObject] = []
    for _ in range(count * 30):
        if len(objects) == count:
            break
        base = _floor_point(camera, rng.uniform(-0.9, 0.9), rng.uniform(-0.95, 0.5))
        if base is None or base[2] > wall_distance - 3.0:
            continue
        shape = str(rng.choice(SHAPES))
        size = rng.uniform(0.45, 0.8) if rng.random() < 0.5 else rng.uniform(0.8, 1.35)
        height = rng.uniform(0.8, 2.4) * size if shape == "cylinder" else 2.0 * size
        obj = SceneObject(
            shape=shape, x=float(base[0]), z=float(base[2]), size=float(size), height=float(height),
            angle=float(rng.uniform(0, math.pi / 2)), material=floor,
        )
        clear = all(
            math.hypot(obj.x - o.x, obj.z - o.z) > obj.footprint_radius + o.footprint_radius + 0.1 for o in objects
        )
        if clear and _fits_in_frame(camera, obj, min_height=min_height):
            objects.append(replace(obj, material=dress(size)))
    return objects


def sample_scene(
    rng_or_seed: np.random.Generator | int | None,
    size: int = 128,
    min_objects: int = 1,
    max_objects: int = 10,
    min_visible_pixels: int | None = None,
    style: str = "textured",
) -> Scene:
    """A random scene of `style` (`SCENE_STYLES`) whose objects each show at least `min_visible_pixels` pixels at `size`.

    Objects hidden (almost) entirely behind others are dropped; as removing an object only
    uncovers the rest, one pass suffices. Default `min_visible_pixels` is size*size/1000 (16 at 128).
    """
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects} and {max_objects}")
    check_style(style)
    layout = _sample_simple_layout if style == "simple" else _sample_layout
    rng = np.random.default_rng(rng_or_seed)
    min_visible = max(1, size * size // 1000) if min_visible_pixels is None else min_visible_pixels
    for _ in range(50):
        scene = layout(rng, int(rng.integers(min_objects, max_objects + 1)))
        counts = np.bincount(object_ids(scene, size).ravel(), minlength=len(scene.objects) + 1)[1:]
        scene.objects = [obj for obj, n in zip(scene.objects, counts) if n >= min_visible]
        if len(scene.objects) >= min_objects:
            return scene
    raise ValueError(
        f"could not fit {min_objects} visible objects into a {size}x{size} scene; lower min_objects"
    )


def check_style(style: str) -> None:
    """Refuse a scene style that is not one of `SCENE_STYLES`."""
    if style not in SCENE_STYLES:
        raise ValueError(f"scene_style must be one of {SCENE_STYLES}, got {style!r}")


def _random_light(rng: np.random.Generator) -> np.ndarray:
    """Unit vector towards a light 35-65 degrees up, from behind and beside the camera."""
    elevation, azimuth = math.radians(rng.uniform(35.0, 65.0)), math.radians(rng.uniform(110.0, 250.0))
    return np.array(
        [math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth)]
    )


def _sample_layout(rng: np.random.Generator, count: int) -> Scene:
    camera = Camera(
        height=rng.uniform(6.0, 9.0),
        pitch=math.radians(rng.uniform(22.0, 48.0)),
        fov=math.radians(rng.uniform(40.0, 50.0)),
    )
    light = _random_light(rng)
    palette = _palette(rng)
    floor_pattern = str(rng.choice(["noise", "rock", "rock", "tiles", "marble", "checks", "stripes", "rings", "dots"]))
    i, j = rng.choice(len(palette), size=2, replace=False)
    floor = _material(rng, floor_pattern, (palette[i], palette[j]), rng.uniform(0.4, 1.0))
    floor = replace(floor, shininess=0.0)
    k, m = rng.choice(len(palette), size=2, replace=False)
    backdrop_colors = (palette[k] * 0.8, palette[m] * 0.9)
    backdrop = replace(_material(rng, str(rng.choice(PATTERNS)), backdrop_colors, rng.uniform(0.1, 0.3)), shininess=0.0)
    wall_distance = float(rng.uniform(28.0, 40.0))
    noise = rng.random((_NOISE_PERIOD,) * 3, dtype=np.float32)
    objects = _place_objects(
        rng, camera, wall_distance, floor, count, lambda size: _object_material(rng, palette, floor, size)
    )
    return Scene(camera, light, floor, backdrop, wall_distance, objects, noise)


def _solid(colour: np.ndarray) -> Material:
    """A material of one colour everywhere (its pattern does not matter)."""
    return Material(pattern="checks", colors=np.stack([colour, colour]), frequency=1.0, rotation=np.eye(3), offset=np.zeros(3))


def _sample_simple_layout(rng: np.random.Generator, count: int) -> Scene:
    """A Multi-dSprites/CLEVR-like layout: a steeper camera, one plain muted background colour (floor and
    backdrop alike) and objects of one saturated colour each, at least a fifth of the frame tall."""
    camera = Camera(
        height=rng.uniform(7.0, 9.0), pitch=math.radians(rng.uniform(50.0, 65.0)), fov=math.radians(rng.uniform(44.0, 50.0))
    )  # fmt: skip
    light = _random_light(rng)
    plain = _solid(_hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.6)))
    noise = np.zeros((1, 1, 1), dtype=np.float32)  # solid colours sample no noise

    def dress(size: float) -> Material:
        return _solid(_hsv(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)))

    objects = _place_objects(rng, camera, 40.0, plain, count, dress, min_height=0.2)
    return Scene(camera, light, plain, plain, 40.0, objects, noise)


def draw_simple_scene(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a simple-style scene: the background pixels take the floor's plain colour exactly, each object
    its own colour under ambient + diffuse light (no texture, shadow or haze). Same outputs as `draw_scene`."""
    origin, dirs, t, ids, _ = _first_hits(scene, size)
    colour = np.broadcast_to(scene.floor.colors[0], (len(ids), 3)).copy()
    points = origin + t[:, None] * dirs
    for k, obj in enumerate(scene.objects):
        selected = ids == k + 1
        light = np.clip(_object_normals(obj, points[selected]) @ scene.light, 0.0, 1.0)
        colour[selected] = obj.material.colors[0] * (0.55 + 0.45 * light)[:, None]
    image = (np.clip(colour, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image.reshape(size, size, 3), ids.reshape(size, size).astype(np.uint8)


def render_scene(
    rng_or_seed: np.random.Generator | int | None,
    size: int = 128,
    min_objects: int = 1,
    max_objects: int = 10,
    style: str = "textured",
) -> tuple[np.ndarray, np.ndarray]:
    """One random scene of `style`: image (size, size, 3) uint8 and mask (size, size) uint8, 0 = background.

    The same seed gives the same scene. Object ids are 1..n with every id present.
    """
    scene = sample_scene(rng_or_seed, size, min_objects, max_objects, style=style)
    return (draw_simple_scene if style == "simple" else draw_scene)(scene, size)


# ------------------------------------------------------------------------------- folders


def mask_to_colors(mask: np.ndarray) -> np.ndarray:
    """Integer mask (H, W) to the RGB mask format (H, W, 3) written to disk (`MASK_PALETTE`)."""
    return MASK_PALETTE[mask]


def _write_one(job: tuple[Path, str, int, int, int, int, int, str]) -> None:
    out_dir, split, index, seed, size, min_objects, max_objects, style = job
    split_code = {"train": 0, "val": 1}[split]
    image, mask = render_scene(np.random.default_rng([seed, split_code, index]), size, min_objects, max_objects, style)
    name = f"{index:06d}.png"
    Image.fromarray(image).save(out_dir / "images" / split / name, compress_level=3)
    Image.fromarray(mask_to_colors(mask)).save(out_dir / "masks" / split / name, compress_level=3)


def write_scene_folder(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    size: int = 128,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 10,
    workers: int = 1,
    style: str = "textured",
) -> Path:
    """Write `images/{train,val}/NNNNNN.png` and colour-coded `masks/{train,val}/NNNNNN.png` of `style`.

    Scene i of a split is seeded by (seed, split, i), so the files do not depend on `workers`
    and no validation scene shares its random stream with a training scene.
    A `scenes.json` beside them records the settings. Returns `out_dir` as a Path.
    """
    if n_train < 0 or n_val < 0:
        raise ValueError(f"scene counts must be >= 0, got n_train={n_train}, n_val={n_val}")
    check_style(style)
    out = Path(out_dir)
    jobs = []
    for split, count in (("train", n_train), ("val", n_val)):
        for kind in ("images", "masks"):
            (out / kind / split).mkdir(parents=True, exist_ok=True)
        jobs += [(out, split, i, seed, size, min_objects, max_objects, style) for i in range(count)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_one, jobs, chunksize=16))
    else:
        for job in jobs:
            _write_one(job)
    settings = dict(
        generator="col775.slots.scenes", style=style, seed=seed, size=size, n_train=n_train, n_val=n_val,
        min_objects=min_objects, max_objects=max_objects, mask_format="RGB, MASK_PALETTE, background black",
    )
    (out / "scenes.json").write_text(json.dumps(settings, indent=2) + "\n")
    return out
