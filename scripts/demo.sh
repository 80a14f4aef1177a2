#!/usr/bin/env bash
# `make demo`: the pipeline on small defaults (a few minutes on a laptop CPU). Outputs under out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=out/demo
mkdir -p "$OUT"

echo "== 1. datagen: 200 synthetic samples into WebDataset shards"
datagen render --n 200 --shard-size 100 --out "$OUT/data"
datagen preview --data "$OUT/data" --out "$OUT/preview.png" --n 16
datagen stats --data "$OUT/data" --out "$OUT/stats.png" > "$OUT/stats.json"
echo "   wrote $OUT/preview.png, $OUT/stats.png, $OUT/stats.json"

echo "== 2. refine: the sample photo to a textured, refined mesh"
refine sfs data/astronaut.png --out "$OUT/astronaut" --force
echo "   look at $OUT/astronaut/overlay.png (photo | coarse | + detail net | refined | mesh over the photo)"

echo "== 3. refine video: the project's sample clip, tracked, one identity for the clip"
refine video data/sample_clip.mp4 --out "$OUT/clip" --force
echo "   look at $OUT/clip/overlay.mp4 (the fitted mesh over the frames) and $OUT/clip/frames.jsonl"
