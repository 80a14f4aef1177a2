"""Make ``docs/random_faces.png``: 32 random faces (4 rows x 8) of the data generator, rendered with the
real renderer (shape, expression, albedo, iris, pose, light and background of ``datagen.scene.draw_scene``).

Rerun after the model changes: ``.venv/bin/python scripts/random_faces.py [OUT.png]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "docs" / "random_faces.png"


def main(out: str | Path = OUT, seed: int = 0, n: int = 32, cols: int = 8, model_path: str | None = None) -> Path:
    """Render faces 0..n-1 of the dataset ``seed`` and write their contact sheet to ``out``."""
    from datagen.scene import draw_scene
    from datagen.sheet import contact_sheet
    from facesynth.config import load_config
    from facesynth.io import save_png
    from morphable.model import load_model
    from render.renderer import FaceRenderer

    cfg = load_config()
    model = load_model(model_path or cfg.resolve_path(cfg.model.path))
    renderer = FaceRenderer.from_config(model, cfg.render)
    tiles = []
    for i in range(n):
        scene = draw_scene(seed, i, model, cfg)
        face = renderer.render_face(scene.alpha_gt, scene.pose, scene.head_albedo(model), scene.light,
                                    scene.background)
        tiles.append(face.rgb)
    return save_png(out, contact_sheet(tiles, cols))


if __name__ == "__main__":
    print(main(*sys.argv[1:2]))
