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
    maps = net.backbone(torch.rand(1, 2, 200, 200))
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


def test_later_passes_draw_the_new_shape_where_its_landmark_pose_puts_it_in_the_warped_photo(cfg, model):
    """network_fit warps the photo into the network frame once, with the first shape's landmark pose; a later
    pass's shape is drawn under its own landmark pose carried through that same map (not re-centred at the
    frame's mean scale), so image and shading stay aligned as in the next-pass training pairs."""
    import numpy as np

    from coarse.frame import NetworkFrame, frame_map
    from coarse.iterative import landmark_pose, network_fit
    from coarse.landmarks import vertex_landmarks
    from render.camera import Pose, euler_to_rotation

    rng = np.random.default_rng(0)
    truth = np.r_[rng.normal(size=model.n_identity) * 1.5, np.zeros(model.n_expression)].astype(np.float32)
    photo_pose = Pose(1.7, euler_to_rotation(0.2, -0.1, 0.05), np.array([260.0, 240.0]))
    points = vertex_landmarks(model).project(model, truth, photo_pose)
    other = np.r_[rng.normal(size=model.n_identity) * 1.5, np.zeros(model.n_expression)].astype(np.float32)
    frame = NetworkFrame(64, float(cfg.sampling.pose.scale_mean))
    steps, final = network_fit(lambda x, a: np.tile(other, (len(a), 1)), frame, np.zeros((512, 512), np.float32),
                               points, model, cfg.render, iterations=2, alpha0=np.zeros(model.n_coeffs, np.float32))
    first = landmark_pose(points, model, np.zeros(model.n_coeffs, np.float32))
    fmap = frame_map(first, frame.pose(model, first.rotation))
    want = landmark_pose(points, model, other)
    assert abs(want.scale / first.scale - 1) > 0.01  # the new shape fits the landmarks at another scale
    for alpha, pose in steps:
        np.testing.assert_allclose(alpha, other)
        assert pose.scale == pytest.approx(want.scale * fmap.k)
        np.testing.assert_allclose(pose.translation, fmap.forward(want.translation), atol=1e-9)
        np.testing.assert_allclose(pose.rotation, want.rotation, atol=1e-12)
    assert final.scale == pytest.approx(want.scale)


def test_dense_head_converted_from_the_mean_head_computes_the_same():
    """The 3x3 convolution + average over space is one linear map of the last feature map: the converted dense
    head gives the mean head's outputs, border taps included."""
    from coarse.network import dense_from_mean, feature_map_size

    torch.manual_seed(1)
    net = IterativeNet(K, 2, (4, 8, 8, 16)).eval()
    torch.nn.init.normal_(net.correction.weight, std=0.1)
    torch.nn.init.normal_(net.regress.bias, std=0.1)
    for size in (64, 50):  # 4 x 4 maps, and 50 -> 4 x 4 after odd halvings (25 -> 13 -> 7 -> 4)
        dense = dense_from_mean(net, size).eval()
        assert dense.head == "dense" and dense.feature_size == feature_map_size(size) == 4
        x, a = torch.rand(3, 2, size, size), torch.randn(3, K)
        with torch.no_grad():
            torch.testing.assert_close(dense(x, a), net(x, a), atol=1e-5, rtol=1e-5)
        # one weight per position and map: interior positions share the mean head's weight only at the start
        assert dense.regress.weight.shape == (K, 16 * 4 * 4)
        w = dense.regress.weight.detach().reshape(K, 16, 4, 4)
        torch.testing.assert_close(w[:, :, 1, 1], w[:, :, 2, 2])  # interior: all nine taps, as the average has
        assert not torch.allclose(w[:, :, 0, 0], w[:, :, 1, 1])  # a corner sees four of them
    with pytest.raises(ValueError, match="image_size"):
        IterativeNet(K, 2, head="dense")
    with pytest.raises(ValueError, match="for 4x4 feature maps"):
        dense_from_mean(net, 64)(torch.rand(1, 2, 128, 128), torch.zeros(1, K))
