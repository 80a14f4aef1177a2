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


def test_several_views_average_the_network_over_the_shifts_and_scales_it_was_trained_to_ignore(cfg, model):
    """refine.network_views: view 0 is the plain frame, the others fixed opposite pairs of train.augment's shift
    and scale (the same for every face); each pass runs the network on all views as one batch, every view's
    image and shading moved together, and takes the mean of their predictions."""
    import numpy as np

    from coarse.frame import NetworkFrame
    from coarse.iterative import network_fit
    from coarse.landmarks import vertex_landmarks
    from render.camera import Pose, euler_to_rotation

    frame = NetworkFrame(64, float(cfg.sampling.pose.scale_mean), shift=0.02, scale_std=0.03)
    R = euler_to_rotation(0.2, -0.1, 0.05)
    views = frame.views(model, R, 5)
    base = frame.pose(model, R)
    def same(a, b):
        return a.scale == b.scale and np.array_equal(a.translation, b.translation) and np.array_equal(a.rotation,
                                                                                                    b.rotation)

    again, two = frame.views(model, R, 5), frame.views(model, R, 2)
    assert same(views[0], base) and all(map(same, views, again)) and all(map(same, two, views[:2]))
    c = 32.0
    for a, b in ((views[1], views[2]), (views[3], views[4])):
        assert a.scale != base.scale and a.scale * b.scale == pytest.approx(base.scale ** 2)
        da = a.translation - (c + a.scale / base.scale * (base.translation - c))
        db = b.translation - (c + b.scale / base.scale * (base.translation - c))
        assert 0.1 < np.abs(da).max() < 8 and np.allclose(da, -db)
    with pytest.raises(ValueError):
        frame.views(model, R, 0)

    rng = np.random.default_rng(1)
    truth = np.r_[rng.normal(size=model.n_identity), np.zeros(model.n_expression)].astype(np.float32)
    photo_pose = Pose(1.7, R, np.array([260.0, 240.0]))
    points = vertex_landmarks(model).project(model, truth, photo_pose)
    photo = np.random.default_rng(2).uniform(size=(512, 512)).astype(np.float32)
    calls = []

    def predict(x, a):  # a prediction that depends on where the face lies in each view
        calls.append(x)
        out = np.tile(a[:1], (len(a), 1))
        out[:, 0] = [np.mean(np.nonzero(x[i, -1])[1]) for i in range(len(x))]
        return out

    start = np.zeros(model.n_coeffs, np.float32)
    steps, _ = network_fit(predict, frame, photo, points, model, cfg.render, iterations=1, alpha0=start, views=3)
    (x,) = calls
    assert x.shape == (3, 2, 64, 64) and not np.array_equal(x[0], x[1]) and not np.array_equal(x[1], x[2])
    per_view = [np.mean(np.nonzero(x[i, -1])[1]) for i in range(3)]
    assert steps[0][0][0] == pytest.approx(np.mean(per_view), rel=1e-5)
    for i in range(3):  # image and shading moved together: the image is kept where the shading is
        assert np.array_equal(x[i, 0] > 0, x[i, 1] > 0)
