"""Oracles for the point-cloud geometry: FPS, kNN and Chamfer against brute-force Python loops."""

import math

import pytest
import torch

from mae_zoo.nets.point_ops import chamfer_l1, chamfer_l2, farthest_point_sample, gather_points, group_points, knn_group


def _fps_loop(points: torch.Tensor, m: int, start: int = 0, skip_origin: bool = False) -> list[int]:
    """FPS as the pointnet2 CUDA kernel describes it, one cloud, plain Python floats."""
    pts = points.tolist()
    chosen = [start]
    nearest = [math.inf] * len(pts)
    for _ in range(m - 1):
        c = pts[chosen[-1]]
        best, best_i = -1.0, -1
        for i, p in enumerate(pts):
            if skip_origin and p[0] ** 2 + p[1] ** 2 + p[2] ** 2 <= 1e-3:
                continue  # the kernel's `if (mag <= 1e-3) continue;`
            d = (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 + (p[2] - c[2]) ** 2
            nearest[i] = min(nearest[i], d)
            if nearest[i] > best:
                best, best_i = nearest[i], i
        chosen.append(best_i)
    return chosen


def test_fps_matches_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    points = torch.rand(3, 200, 3, generator=g, dtype=torch.float64)
    index = farthest_point_sample(points, 24)
    assert index.shape == (3, 24)
    for b in range(3):
        assert index[b].tolist() == _fps_loop(points[b], 24)
    assert (index[:, 0] == 0).all()  # deterministic start at point 0, as pointnet2_ops


def test_fps_skip_origin_mirrors_the_cuda_kernel():
    g = torch.Generator().manual_seed(7)
    points = torch.rand(2, 120, 3, generator=g, dtype=torch.float64) * 0.2 - 0.1  # many points near the origin
    index = farthest_point_sample(points, 100, skip_origin=True)
    for b in range(2):
        assert index[b].tolist() == _fps_loop(points[b], 100, skip_origin=True)
        near = (points[b].pow(2).sum(-1) <= 1e-3).nonzero().flatten().tolist()
        assert near and not set(index[b, 1:].tolist()) & set(near)
    assert not torch.equal(index, farthest_point_sample(points, 100))  # it matters here


def test_fps_random_start_is_seeded_and_spreads():
    points = torch.rand(4, 300, 3, generator=torch.Generator().manual_seed(1))
    a = farthest_point_sample(points, 16, random_start=True, generator=torch.Generator().manual_seed(5))
    b = farthest_point_sample(points, 16, random_start=True, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    for i in range(4):
        assert a[i].tolist() == _fps_loop(points[i].double(), 16, start=int(a[i, 0]))
        assert len(set(a[i].tolist())) == 16  # distinct samples


def test_knn_sets_match_brute_force():
    g = torch.Generator().manual_seed(2)
    points = torch.rand(2, 150, 3, generator=g)
    centers = gather_points(points, farthest_point_sample(points, 10))
    groups, index = knn_group(points, centers, 12)
    assert groups.shape == (2, 10, 12, 3) and index.shape == (2, 10, 12)
    for b in range(2):
        for j in range(10):
            c = centers[b, j].tolist()
            d = [sum((p[t] - c[t]) ** 2 for t in range(3)) for p in points[b].tolist()]
            expected = set(sorted(range(150), key=lambda i: d[i])[:12])
            assert set(index[b, j].tolist()) == expected
    # groups are centred on their centre, not scaled; each centre is in its own group at offset 0
    torch.testing.assert_close(groups, points[0:2][torch.arange(2)[:, None, None], index] - centers[:, :, None])
    assert (groups.norm(dim=-1).min(dim=-1).values < 1e-6).all()


def test_knn_ties_compared_as_sets():
    # a grid with many equidistant neighbours: which tied points come first is unspecified, the set is not
    axis = torch.arange(5.0)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    center = torch.tensor([[[2.0, 2.0, 2.0]]])
    _, index = knn_group(grid, center, 7)  # the centre and its 6 face neighbours, all at distance <= 1
    got = {tuple(grid[0, i].tolist()) for i in index[0, 0].tolist()}
    assert got == {(2, 2, 2), (1, 2, 2), (3, 2, 2), (2, 1, 2), (2, 3, 2), (2, 2, 1), (2, 2, 3)}


def _chamfer_loop(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(mean a->b squared nearest distance, mean b->a) for one pair of sets."""

    def one_way(x, y):
        return sum(min(sum((p[t] - q[t]) ** 2 for t in range(3)) for q in y) for p in x) / len(x)

    return one_way(a.tolist(), b.tolist()), one_way(b.tolist(), a.tolist())


def test_chamfer_l2_and_l1_match_loop():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 9, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, 7, 3, generator=g, dtype=torch.float64)
    ways = [_chamfer_loop(a[s], b[s]) for s in range(4)]
    per_set = torch.tensor([ab + ba for ab, ba in ways], dtype=torch.float64)
    torch.testing.assert_close(chamfer_l2(a, b, reduction="none").double(), per_set, rtol=1e-5, atol=1e-6)
    # official reduction: mean over every point of every set, both ways summed, no 1/2
    expected = sum(ab for ab, _ in ways) / 4 + sum(ba for _, ba in ways) / 4
    assert chamfer_l2(a, b).item() == pytest.approx(expected, rel=1e-5)

    def sqrt_way(x, y):
        return sum(min(math.dist(p, q) for q in y.tolist()) for p in x.tolist()) / len(x)

    l1 = sum((sqrt_way(a[s], b[s]) + sqrt_way(b[s], a[s])) / 2 for s in range(4)) / 4
    assert chamfer_l1(a, b).item() == pytest.approx(l1, rel=1e-5)


def test_chamfer_zero_on_permuted_copy_and_gradients_finite():
    a = torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(4), requires_grad=True)
    b = a.detach()[:, torch.randperm(16)]
    assert chamfer_l2(a, b).item() == pytest.approx(0.0, abs=1e-10)
    chamfer_l1(a, b).backward()
    assert torch.isfinite(a.grad).all()


def test_group_points_shapes():
    points = torch.rand(2, 64, 3)
    groups, centers = group_points(points, 8, 4)
    assert groups.shape == (2, 8, 4, 3) and centers.shape == (2, 8, 3)
