"""The iterative ResNet (Fig. 4): shapes, parameter count, the features/head split, shape errors."""
from __future__ import annotations

import pytest
import torch

from coarse.network import BasicBlock, IterativeNet, count_parameters

K = 153


def test_output_shapes_and_parameter_count():
    net = IterativeNet(K, 2)
    n = count_parameters(net)
    print(f"IterativeNet parameters: {n:,}")
    assert 3.0e6 < n < 3.4e6  # the paper's Fig. 4 with K = 153: about 3.2 M
    x, a = torch.rand(3, 2, 64, 64), torch.randn(3, K)
    assert net.forward_features(x).shape == (3, K)
    assert net(x, a).shape == (3, K)
    # Fig. 4 at the paper's 200 x 200: 100 -> 100 -> 50 -> 25 -> 13 maps before averaging
    maps = net.blocks(net.stem(torch.rand(1, 2, 200, 200)))
    assert maps.shape == (1, 256, 13, 13)


def test_untrained_network_returns_the_current_estimate():
    """The correction layer starts at zero: a_{t+1} = a_t before any training step."""
    net = IterativeNet(K, 2).eval()
    a = torch.randn(2, K)
    assert torch.equal(net(torch.rand(2, 2, 48, 48), a), a)


def test_forward_is_features_then_head():
    torch.manual_seed(0)
    net = IterativeNet(K, 2).eval()
    torch.nn.init.normal_(net.correction.weight, std=0.01)
    x, a = torch.rand(2, 2, 64, 64), torch.randn(2, K)
    with torch.no_grad():
        assert torch.allclose(net(x, a), net.forward_head(net.forward_features(x), a))
        assert not torch.allclose(net(x, a), a)


def test_basic_block_shapes():
    assert BasicBlock(32, 32)(torch.rand(1, 32, 20, 20)).shape == (1, 32, 20, 20)
    assert BasicBlock(32, 64, 2)(torch.rand(1, 32, 25, 25)).shape == (1, 64, 13, 13)


def test_colour_input_and_bad_shapes():
    net = IterativeNet(K, 4)
    assert net(torch.rand(1, 4, 32, 32), torch.zeros(1, K)).shape == (1, K)
    with pytest.raises(ValueError, match=r"expected input \(B, 4, H, W\); got \(1, 2, 32, 32\)"):
        net(torch.rand(1, 2, 32, 32), torch.zeros(1, K))
    with pytest.raises(ValueError, match="alpha_t"):
        net(torch.rand(1, 4, 32, 32), torch.zeros(1, K - 1))
