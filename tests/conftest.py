"""Shared fixtures: the pipeline config, the converted face model (loaded once per session) and the ICT
source folder. Tests that need a missing file skip with the reason."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from facesynth.config import REPO_ROOT, load_config

#: Where the ICT-FaceKit ``FaceXModel`` folder is looked for: the ``shared/`` folder beside the repository
#: (``ICT_FACEKIT_DIR`` overrides).
ICT_DIR_DEFAULT = REPO_ROOT.parent / "shared" / "morphable" / "ict-facekit" / "FaceXModel"


@pytest.fixture(scope="session")
def cfg():
    """The default :class:`facesynth.config.Config` (``pipeline.yaml``)."""
    return load_config()


@pytest.fixture(scope="session")
def model_path(cfg) -> Path:
    path = cfg.resolve_path(cfg.model.path)
    if not path.exists():
        pytest.skip(f"{path} not converted (python -m morphable.convert)")
    return path


@pytest.fixture(scope="session")
def model(model_path):
    """The converted ICT model, shared by every test of the session (read-only: do not modify)."""
    from morphable.model import load_model

    return load_model(model_path)


@pytest.fixture(scope="session")
def ict_dir() -> Path:
    """The ICT-FaceKit ``FaceXModel`` folder the model was converted from."""
    path = Path(os.environ.get("ICT_FACEKIT_DIR", ICT_DIR_DEFAULT))
    if (path / "FaceXModel").is_dir():
        path = path / "FaceXModel"
    if not (path / "generic_neutral_mesh.obj").exists():
        pytest.skip(f"ICT-FaceKit FaceXModel folder not found at {path} (set ICT_FACEKIT_DIR)")
    return path


@pytest.fixture(scope="session")
def dying():
    """``dying(loader, n)``: a loader function whose stream raises KeyboardInterrupt when batch ``n`` is
    due (a run killed after n steps), for resume tests."""
    def wrap(loader, n: int):
        def dying_loader(*args, **kwargs):
            for i, b in enumerate(loader(*args, **kwargs)):
                if i == n:
                    raise KeyboardInterrupt
                yield b
        return dying_loader
    return wrap
