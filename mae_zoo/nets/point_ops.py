"""Point-cloud geometry in plain torch: farthest-point sampling, kNN grouping and Chamfer distances.

The official Point-MAE code needs three CUDA-only extensions (pointnet2_ops FPS, KNN_CUDA, the
Chamfer kernel); these functions compute the same quantities on any device, batched:

* :func:`farthest_point_sample`: iterative FPS, starting at point 0 (as the CUDA op) or at a
  random point; ties in the farthest distance go to the lowest index (``argmax``).
* :func:`knn_group`: the ``k`` nearest points (squared Euclidean, ``torch.cdist`` + ``topk``) of
  every centre, gathered and centred on their centre (no scaling), as Point-MAE's ``Group``.
* :func:`chamfer_l2` / :func:`chamfer_l1`: the official ``ChamferDistanceL2`` (mean squared
  nearest-neighbour distance in both directions, summed, no 1/2) and ``ChamferDistanceL1``
  (square roots of those distances, the two means averaged).
"""

from __future__ import annotations

import torch
from torch import Tensor


def gather_points(points: Tensor, index: Tensor) -> Tensor:
    """Rows of ``points`` (B, N, C) picked by ``index`` (B, *S) -> (B, *S, C)."""
    b, c = points.shape[0], points.shape[-1]
    flat = index.reshape(b, -1)
    out = torch.gather(points, 1, flat[..., None].expand(-1, -1, c))
    return out.reshape(*index.shape, c)


@torch.no_grad()
def farthest_point_sample(
    points: Tensor,
    num_samples: int,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    skip_origin: bool = False,
) -> Tensor:
    """Indices (B, num_samples) of farthest-point samples of ``points`` (B, N, 3).

    The first sample is point 0 (the deterministic start of pointnet2_ops' CUDA kernel), or a
    uniformly random point per cloud with ``random_start`` (drawn from ``generator``). Each next
    sample is the point whose squared distance to the chosen set is largest (first index on ties).
    Distances are computed in float32 whatever the input dtype.

    ``skip_origin``: mirror a quirk of pointnet2_ops' CUDA kernel, which skips every point with
    ``|p|^2 <= 1e-3`` when it looks for the farthest one (``if (mag <= 1e-3) continue;``), so such a
    point is never chosen after the first; on centred unit-sphere clouds that is a ball of radius
    0.032 around the centroid. Off by default (textbook FPS).
    """
    b, n, _ = points.shape
    if not 0 < num_samples <= n:
        raise ValueError(f"cannot draw {num_samples} farthest points from clouds of {n} points")
    xyz = points.float()
    index = torch.zeros(b, num_samples, dtype=torch.long, device=points.device)
    if random_start:
        farthest = torch.randint(0, n, (b,), generator=generator).to(points.device)
    else:
        farthest = torch.zeros(b, dtype=torch.long, device=points.device)
    nearest = torch.full((b, n), float("inf"), device=points.device)
    rows = torch.arange(b, device=points.device)
    skipped = xyz.pow(2).sum(-1) <= 1e-3 if skip_origin else None
    for i in range(num_samples):
        index[:, i] = farthest
        centre = xyz[rows, farthest]  # (B, 3)
        nearest = torch.minimum(nearest, (xyz - centre[:, None]).pow(2).sum(-1))
        farthest = (nearest if skipped is None else nearest.masked_fill(skipped, -1.0)).argmax(dim=1)
    return index


def square_distance(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances (B, P, Q) between ``a`` (B, P, C) and ``b`` (B, Q, C)."""
    # cdist's matmul path loses precision on near-identical points; the exact difference path is
    # cheap at point-group sizes, so it is forced.
    return torch.cdist(a.float(), b.float(), compute_mode="donot_use_mm_for_euclid_dist").pow(2)


def knn_indices(points: Tensor, centers: Tensor, k: int) -> Tensor:
    """Indices (B, G, k) of the ``k`` points of ``points`` (B, N, 3) nearest to each centre (B, G, 3),
    nearest first (the order among exact ties is unspecified: compare them as sets)."""
    if not 0 < k <= points.shape[1]:
        raise ValueError(f"cannot take {k} neighbours from clouds of {points.shape[1]} points")
    return square_distance(centers, points).topk(k, dim=-1, largest=False, sorted=True).indices


def knn_group(points: Tensor, centers: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Point-MAE's grouping: the ``k`` nearest points of each centre, centred on it.

    Returns ``(groups, index)``: groups (B, G, k, 3) = neighbours minus their centre (no scaling),
    index (B, G, k) into ``points``.
    """
    index = knn_indices(points, centers, k)
    groups = gather_points(points, index) - centers[:, :, None, :]
    return groups, index


def group_points(
    points: Tensor,
    num_groups: int,
    group_size: int,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    skip_origin: bool = False,
) -> tuple[Tensor, Tensor]:
    """FPS ``num_groups`` centres of ``points`` (B, N, 3), then :func:`knn_group`: (groups, centres)."""
    centers = gather_points(points, farthest_point_sample(points, num_groups, random_start, generator, skip_origin))
    groups, _ = knn_group(points, centers, group_size)
    return groups, centers


def _nearest_both_ways(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    d = square_distance(a, b)
    return d.min(dim=2).values, d.min(dim=1).values  # (S, P): a -> b, (S, Q): b -> a


def chamfer_l2(a: Tensor, b: Tensor, reduction: str = "mean") -> Tensor:
    """Official ``ChamferDistanceL2`` between point sets ``a`` (S, P, 3) and ``b`` (S, Q, 3):
    mean over points of the squared distance to the nearest point of the other set, a->b plus b->a.

    ``reduction="mean"``: one scalar, the means taken over all sets and points (as the official
    kernel); ``"none"``: one value per set (S,) (equal to ``mean`` averaged over sets)."""
    ab, ba = _nearest_both_ways(a, b)
    if reduction == "none":
        return ab.mean(dim=1) + ba.mean(dim=1)
    if reduction == "mean":
        return ab.mean() + ba.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got '{reduction}'")


def chamfer_l1(a: Tensor, b: Tensor, reduction: str = "mean", eps: float = 1e-12) -> Tensor:
    """Official ``ChamferDistanceL1``: Euclidean (square-rooted) nearest distances, the two means
    averaged: ``(mean sqrt(a->b) + mean sqrt(b->a)) / 2``. ``eps`` keeps the gradient finite at 0."""
    ab, ba = _nearest_both_ways(a, b)
    ab, ba = ab.clamp_min(eps).sqrt(), ba.clamp_min(eps).sqrt()
    if reduction == "none":
        return (ab.mean(dim=1) + ba.mean(dim=1)) / 2
    if reduction == "mean":
        return (ab.mean() + ba.mean()) / 2
    raise ValueError(f"reduction must be 'mean' or 'none', got '{reduction}'")
