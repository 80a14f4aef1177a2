"""The shared training loop's resume rule: which config keys a resumed run may change."""
from __future__ import annotations

import pytest

from facesynth.config import override
from training.loop import TrainingError, check_resumable, resume_may_change


@pytest.mark.parametrize("key, section, reads, may", [
    ("train.lr", "train", (), True),  # a resumed run may lower it
    ("train.steps", "train", (), True),
    ("train.batch", "train", (), False),  # changes the steps taken
    ("train.seed", "train", (), False),
    ("render.backend", "train", (), True),
    ("render.image_size", "train", (), False),
    ("model.path", "train", (), False),
    ("datagen.seed", "train", (), False),
    ("detail.crop", "train", (), True),  # another stage's section
    ("evaluate.landmark_noise_px", "train", (), True),
    ("detail.weights", "detail", (), True),
    ("detail.crops_per_face", "detail", (), False),
    ("train.batch", "detail", (), True),
    ("evaluate.landmark_noise_px", "detail", ("evaluate.landmark_noise_px",), False),  # the data reads it
    ("evaluate.n", "detail", ("evaluate.landmark_noise_px",), True),
])
def test_resume_may_change(key, section, reads, may):
    assert resume_may_change(key, section, reads) is may


def test_check_resumable_names_the_key(cfg):
    saved = cfg.to_dict()
    check_resumable(saved, override(override(cfg, "train.lr", 1e-5), "detail.crop", 64), "train")
    with pytest.raises(TrainingError, match=r"another config \(train\.batch: "):
        check_resumable(saved, override(cfg, "train.batch", cfg.train.batch + 1), "train")
    with pytest.raises(TrainingError, match=r"evaluate\.landmark_noise_px"):
        check_resumable(saved, override(cfg, "evaluate.landmark_noise_px", 2.5), "detail",
                        ("evaluate.landmark_noise_px",))


def test_a_run_saved_before_a_key_existed_resumes_at_its_default(cfg):
    """A key added to pipeline.yaml after the run was saved counts at its default: the run resumes with it
    there, not with another value; a saved key this version does not know is refused in one line."""
    saved = cfg.to_dict()
    del saved["train"]["augment"]["albedo_std"], saved["train"]["input_mask"]
    check_resumable(saved, cfg, "train")
    with pytest.raises(TrainingError, match=r"train\.input_mask: 'shading' there, 'landmarks' now"):
        check_resumable(saved, override(cfg, "train.input_mask", "landmarks"), "train")
    saved["train"]["no_such_key"] = 1
    with pytest.raises(TrainingError, match="cannot read"):
        check_resumable(saved, cfg, "train")
