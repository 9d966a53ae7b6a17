"""An embedded, labelled point-cloud dataset that needs no download: procedural shapes.

Ten classes of surfaces (sphere, cube, cylinder, cone, torus, plane, pyramid, capsule, tube,
dumbbell), each drawn as a triangle mesh with a random aspect, sampled uniformly by area, randomly
rotated (any rotation in SO(3)), optionally cut to a partial view (the points on one side of a random
direction), normalised to the unit sphere and jittered with Gaussian noise. Everything is drawn
from ``numpy.random.default_rng((seed, index))``: the same seed gives the same clouds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import trimesh
from trimesh import creation

CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "plane", "pyramid", "capsule", "tube", "dumbbell")


def _pyramid() -> trimesh.Trimesh:
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [0, 0, 1.4]], dtype=np.float64)
    f = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    return trimesh.Trimesh(v, f, process=False)


def _dumbbell() -> trimesh.Trimesh:
    a = creation.icosphere(2, radius=0.45)
    b = a.copy()
    a.apply_translation([0, 0, -0.8])
    b.apply_translation([0, 0, 0.8])
    joined: Any = trimesh.util.concatenate([a, b, creation.cylinder(0.12, 1.0, sections=24)])
    return joined


def base_meshes() -> list[trimesh.Trimesh]:
    """One unit-sized mesh per class, in :data:`CLASSES` order."""
    return [
        creation.icosphere(3),
        creation.box((1.5, 1.5, 1.5)),
        creation.cylinder(0.6, 1.6, sections=48),
        creation.cone(0.8, 1.6, sections=48),
        creation.torus(0.75, 0.25, major_sections=48, minor_sections=24),
        creation.box((2.0, 2.0, 0.02)),
        _pyramid(),
        creation.capsule(1.2, 0.45, count=[24, 24]),
        creation.annulus(0.45, 0.7, 1.2, sections=48),
        _dumbbell(),
    ]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point is at distance 1 (Point-MAE ``pc_norm``)."""
    points = points - points.mean(axis=0)
    radius = float(np.sqrt((points**2).sum(axis=1)).max())
    return points / radius if radius > 0 else points


def partial_view(points: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """The ``keep`` points farthest along a random direction: a cloud cut by a random plane."""
    direction = rng.standard_normal(3)
    order = np.argsort(-(points @ direction), kind="stable")
    return points[order[:keep]]


def sample_view(
    mesh: trimesh.Trimesh,
    num_points: int,
    rng: np.random.Generator,
    partial: tuple[float, float] | None,
    rotate: bool = True,
    noise: float = 0.0,
) -> np.ndarray:
    """(num_points, 3) float32: area-uniform samples of ``mesh``, cut to a random fraction in
    ``partial`` (None: whole), rotated, normalised to the unit sphere, jittered by ``noise``."""
    keep = 1.0 if partial is None else rng.uniform(*partial)
    total = int(np.ceil(num_points / keep))
    points, _ = trimesh.sample.sample_surface(mesh, total, seed=int(rng.integers(2**31)))
    points = np.asarray(points, dtype=np.float64)
    if total > num_points:
        points = partial_view(points, num_points, rng)
    if rotate:
        points = points @ random_rotation(rng).T
    points = normalize_unit_sphere(points)
    if noise > 0:
        points = points + noise * rng.standard_normal(points.shape)
    return points.astype(np.float32)


def make_point_shapes(
    num: int,
    num_points: int = 1024,
    seed: int = 0,
    partial_prob: float = 0.5,
    partial: tuple[float, float] = (0.6, 0.95),
    noise: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` clouds (float32 (num, num_points, 3)) and labels (int64, balanced over the classes).

    Each shape gets a random aspect (per-axis scale in [0.7, 1.3] before rotation); with probability
    ``partial_prob`` it is a partial view keeping a fraction in ``partial`` of its surface."""
    meshes = base_meshes()
    labels = np.random.default_rng(seed).permutation(np.arange(num) % len(CLASSES))
    clouds = np.empty((num, num_points, 3), dtype=np.float32)
    for i, label in enumerate(labels):
        rng = np.random.default_rng((seed, i))
        base = meshes[label]
        mesh = trimesh.Trimesh(base.vertices * rng.uniform(0.7, 1.3, 3), base.faces, process=False)
        cut = partial if rng.random() < partial_prob else None
        clouds[i] = sample_view(mesh, num_points, rng, cut, rotate=True, noise=noise)
    return torch.from_numpy(clouds), torch.from_numpy(labels.astype(np.int64))
