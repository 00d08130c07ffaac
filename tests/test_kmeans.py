"""k-means: determinism, inertia, centers that are the means of their clusters, K per category."""
import pytest
import torch

from prnet.models.kmeans import inertia, kmeans, kmeans_pp, num_prototypes
from prnet.utils import torch_generator


def test_kmeans_deterministic_and_improves_inertia():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 16, generator=g) + 6 * torch.randn(1, 16, generator=g) for _ in range(4)])
    a = kmeans_pp(x, 4, iters=20, generator=torch_generator(3))
    b = kmeans_pp(x, 4, iters=20, generator=torch_generator(3))
    assert torch.equal(a, b)
    init = x[torch.randperm(160, generator=torch_generator(4))[:4]]  # 4 random points
    assert inertia(x, a) < inertia(x, init)
    centers, assign = kmeans(x, 4, iters=0, generator=torch_generator(3))  # iters=0 still makes centers means
    for j in assign.unique():
        assert torch.allclose(centers[j], x[assign == j].mean(0), atol=1e-5)
    true_means = x.view(4, 40, 16).mean(1)
    assert inertia(x, a) <= inertia(x, true_means) * (1 + 1e-4)  # 4 clear clusters found
    assert num_prototypes(762, 0.1) == 76 and num_prototypes(3, 0.1) == 1
    with pytest.raises(ValueError, match="k=5"):
        kmeans_pp(x[:3], 5)
