"""Convert ICT-FaceKit light (FaceXModel/) into the one HDF5 file the pipeline reads.

The converted model keeps only the geometry that is rendered, in this vertex order (the face comes first,
so ICT's face-area, narrow-face and landmark indices stay valid as they are):

=========================  ====================  ==============================================
region                     ICT vertex range      kept as
=========================  ====================  ==============================================
full face area             0 .. 9408             ``face`` (``narrow_face`` = 0 .. 6705)
mouth socket               11248 .. 13293        ``mouth_interior`` (rendered dark)
front teeth (canine to     17895..18390 (upper)  ``teeth`` (the molars and bicuspids are hidden
canine, upper and lower)   20079..20618 (lower)  behind the cheeks in every pose we draw)
eyeballs (sclera, iris)    21451 .. 24590        ``eyes``, ``sclera``, ``iris`` (iris of random colour,
                                                 pupil at its centre)
=========================  ====================  ==============================================

Units: millimetres (ICT's centimetres times 10), y up, face looking along +z. Quads are split into two
triangles. Coefficient order (K = 153): the 100 identity modes ``identity000..identity099``, then the 53
expression blendshapes in the order of ICT's ``vertex_indices.json`` (``browDown_L`` .. ``noseSneer_R``);
``PupilDilate_L/_R`` are left out.

The group ``albedo`` holds our albedo model (ICT light has none): ``mean`` (Vf, 3) and ``basis`` (Vf, 3, Ka)
of display RGB per face-area vertex, the PCA of a generative skin model (see :mod:`morphable.albedo`).

Reads either the trimmed copy (``v`` lines only in the mode files) or a full clone of the ICT-FaceKit
repository: only the ``v`` lines of every mode file and the topology of the neutral mesh are used.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facesynth.io import atomic_path

from .obj import ObjError, read_obj_topology, read_obj_vertices

#: ICT vertex ranges (inclusive start, exclusive end) that the converted model keeps, in order.
KEPT_RANGES: dict[str, tuple[int, int]] = {
    "face": (0, 9409),
    "mouth_interior": (11248, 13294),
    "teeth_upper": (17895, 18391),
    "teeth_lower": (20079, 20619),
    "sclera_left": (21451, 22221),
    "iris_left": (22221, 23021),
    "sclera_right": (23021, 23791),
    "iris_right": (23791, 24591),
}
NARROW_FACE = (0, 6706)
N_IDENTITY = 100
MULTIPIE_68 = [
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443,
    268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147,
    4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081,
    0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966,
]
CM_TO_MM = 10.0


class ConversionError(ValueError):
    """The ICT folder is missing a file or a file does not match the neutral mesh."""


def _vertices(path: Path) -> np.ndarray:
    """(V, 3) positions of an ICT OBJ (cm); a file without vertices is a :class:`ConversionError`."""
    try:
        return read_obj_vertices(path)
    except ObjError as e:
        raise ConversionError(str(e)) from None


def convert(ict_dir: str | Path, out_path: str | Path, albedo_samples: int | None = None,
            albedo_components: int | None = None, albedo_seed: int | None = None) -> Path:
    """Convert an ICT-FaceKit ``FaceXModel`` folder into ``out_path`` (HDF5), with our albedo model.

    Args:
        ict_dir: the ``FaceXModel`` folder (or a repository clone containing it).
        out_path: the HDF5 file to write (written to a temporary name, then renamed).
        albedo_samples, albedo_components, albedo_seed: draws, kept components and seed of the albedo
            PCA (:mod:`morphable.albedo`; defaults ``N_SAMPLES``, ``N_COMPONENTS``, ``SEED`` there).
    """
    import h5py

    ict_dir = Path(ict_dir)
    if (ict_dir / "FaceXModel").is_dir():
        ict_dir = ict_dir / "FaceXModel"
    neutral_path = ict_dir / "generic_neutral_mesh.obj"
    index_path = ict_dir / "vertex_indices.json"
    for p in (neutral_path, index_path):
        if not p.exists():
            raise ConversionError(f"{p} not found: is {ict_dir} an ICT-FaceKit FaceXModel folder?")
    expressions = json.loads(index_path.read_text())["expressions"]
    expressions = [e for e in expressions if not e.startswith("PupilDilate")]

    neutral = _vertices(neutral_path)
    tris_all, tri_uv_all, uv, tri_poly = read_obj_topology(neutral_path, with_polygon=True)

    keep = np.concatenate([np.arange(a, b) for a, b in KEPT_RANGES.values()])
    new_index = np.full(len(neutral), -1, np.int64)
    new_index[keep] = np.arange(len(keep))
    tri_keep = np.all(new_index[tris_all] >= 0, axis=1)
    poly_keep = np.ones(tri_poly.max() + 1, bool)  # keep whole polygons only
    np.logical_and.at(poly_keep, tri_poly, tri_keep)
    tri_keep = poly_keep[tri_poly]
    tris = new_index[tris_all[tri_keep]]
    tri_uv = tri_uv_all[tri_keep]

    def mode(name: str) -> np.ndarray:
        v = _vertices(ict_dir / f"{name}.obj")
        if v.shape != neutral.shape:
            raise ConversionError(f"{name}.obj has {len(v)} vertices, the neutral mesh {len(neutral)}")
        return (v - neutral)[keep] * CM_TO_MM

    names = [f"identity{i:03d}" for i in range(N_IDENTITY)] + expressions
    from tqdm import tqdm

    basis = np.stack([mode(n) for n in tqdm(names, desc="reading ICT modes", unit="file")], axis=-1)

    regions = {}
    start = 0
    for name, (a, b) in KEPT_RANGES.items():
        regions[name] = np.arange(start, start + b - a)
        start += b - a
    regions["narrow_face"] = np.arange(*NARROW_FACE)
    regions["teeth"] = np.concatenate([regions.pop("teeth_upper"), regions.pop("teeth_lower")])
    regions["sclera"] = np.concatenate([regions["sclera_left"], regions["sclera_right"]])
    regions["iris"] = np.concatenate([regions["iris_left"], regions["iris_right"]])
    regions["eyes"] = np.concatenate([regions["sclera"], regions["iris"]])

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["source"] = "ICT-FaceKit light (MIT), FaceXModel"
            f.attrs["units"] = "mm"
            f.attrs["frame"] = "y up, face looking along +z"
            f.attrs["coefficient_order"] = "100 identity modes, then 53 expression blendshapes (expression_names)"
            comp = dict(compression="gzip", compression_opts=9, shuffle=True)
            f.create_dataset("mean", data=(neutral[keep] * CM_TO_MM).astype(np.float32), **comp)
            # (V, 3, K): identity modes first, then expressions.
            f.create_dataset("basis", data=basis.astype(np.float32), chunks=(min(1024, len(keep)), 3, 1), **comp)
            f.create_dataset("triangles", data=tris.astype(np.int32), **comp)
            f.create_dataset("tri_uv", data=tri_uv.astype(np.int32), **comp)
            f.create_dataset("uv", data=uv.astype(np.float32), **comp)
            f.create_dataset("landmarks68", data=np.array(MULTIPIE_68, np.int32))
            f.create_dataset("ict_vertex_index", data=keep.astype(np.int32), **comp)
            f.create_dataset("expression_names", data=np.array(expressions, dtype="S"))
            f.create_dataset("identity_names", data=np.array(names[:N_IDENTITY], dtype="S"))
            g = f.create_group("regions")
            for name, idx in regions.items():
                g.create_dataset(name, data=idx.astype(np.int32))
        _add_albedo(tmp, albedo_samples, albedo_components, albedo_seed)
    return out_path


def _add_albedo(h5_path: Path, n_samples: int | None, n_components: int | None, seed: int | None) -> None:
    """Build the albedo model on the geometry just written to ``h5_path`` and add it to that file."""
    from . import albedo
    from .model import FaceModel

    pca = albedo.build_albedo_pca(
        FaceModel(h5_path),
        albedo.N_SAMPLES if n_samples is None else n_samples,
        albedo.N_COMPONENTS if n_components is None else n_components,
        albedo.SEED if seed is None else seed,
    )
    albedo.write_albedo(h5_path, pca.model, pca.attrs())


if __name__ == "__main__":
    import click

    @click.command()
    @click.option("--ict", "ict_dir", required=True, type=click.Path(exists=True, file_okay=False),
                  help="ICT-FaceKit FaceXModel folder (or a clone of the repository).")
    @click.option("--out", "out_path", default="data/ict_face_model.h5", show_default=True,
                  type=click.Path(dir_okay=False), help="HDF5 file to write.")
    @click.option("--albedo-samples", type=int, default=None, help="Generative faces drawn for the albedo PCA.")
    @click.option("--albedo-components", type=int, default=None, help="Albedo PCA components kept (Ka).")
    @click.option("--albedo-seed", type=int, default=None, help="Seed of the generative skin model.")
    def main(ict_dir, out_path, albedo_samples, albedo_components, albedo_seed):
        """Convert ICT-FaceKit light into the model file the pipeline reads (geometry + albedo model)."""
        path = convert(ict_dir, out_path, albedo_samples, albedo_components, albedo_seed)
        import h5py

        with h5py.File(path, "r") as f:
            a = f["albedo"].attrs
            click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): albedo Ka = {a['n_components']} "
                       f"of {a['n_samples']} draws, {100 * a['explained_variance']:.2f} % of the variance")

    main()
