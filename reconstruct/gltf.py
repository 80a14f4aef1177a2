"""An animatable head as glTF 2.0 binary (.glb): ``face.glb`` of ``refine sfs`` (one photo's head with its
texture) and ``animation.glb`` of ``refine video --gltf`` (the clip's head, its expressions and pose animated
over the clip's frame times); reading such a file back, drawing it, and the Khronos validator's report on it.

Why pygltflib and not trimesh (which the project already has): trimesh's glTF exporter
(``trimesh.exchange.gltf`` 5.2) writes meshes, materials and the scene graph but no morph targets and no
animations (its code has no ``targets``, ``weights`` or ``animations``; asked for morph-target animation, its
maintainer answered that trimesh implements no animation); the only way in is a post-processor that appends
accessors to its buffer by hand. pygltflib is the specification's object model as dataclasses (accessors, buffer
views, meshes with ``targets``, animations, images) plus GLB chunk writing and reading, so the file is assembled
object by object as the specification names them, and read back the same way. What is written here by hand:
packing arrays into the one buffer (:class:`_Builder`, sparse morph targets included) and decoding accessors back
(:func:`accessor_array`, sparse ones included), which pygltflib leaves to its user, and the GLB's three parts
around pygltflib's JSON (:meth:`_Builder.to_bytes`: the bytes of its ``save_to_bytes``, which copies the 11 MB
buffer three times on the way).

What a file holds:

- Units and frame: metres (the model's millimetres x 1e-3), y up, the face looking along +z: glTF's frame is the
  model's, so only the scale changes. ``animation.glb`` turns the head by the camera-frame rotation of each
  video frame (x right, y up, z towards the camera), so seen from +z the head moves as it does in the clip.
- Nodes: ``head`` (the root; ``animation.glb`` animates its rotation and translation) with the children
  ``face`` (the face area with the mouth socket), ``teeth``, and ``eyeLeft`` / ``eyeRight`` (sclera and iris of the
  face's own left (+x) and right eyeball, each node at its eyeball's centre so that turning the node turns the eye).
- The surface: the fitted identity with a neutral expression (all weights 0), in the model's topology, the refined
  surface where ``refine`` has one: the head at its default weights is exactly ``refined.obj`` (the coarse mesh
  moved along its normals by ``params.json``'s ``refined_offset``), and the neutral head is that surface minus the
  fitted expression's blendshape offsets, so the detail is a fixed per-vertex displacement that every expression
  carries. A model vertex is copied where the UV atlas has a seam; the attribute ``_MODEL_VERTEX`` (float) is the
  face-model vertex each glTF vertex copies.
- Attributes: POSITION (with min/max), NORMAL (unit; the area-weighted vertex normals of the whole head, so the
  copies at a seam share one), TEXCOORD_0 (face and teeth: the baked atlas of ``coarse_texture.png``, v down),
  and COLOR_0 (linear RGB from the per-vertex colours) on the eyes, and on every part when there is no texture.
- Morph targets (POSITION and NORMAL deltas; the normal delta of a target is the change of the vertex normals at
  weight 1, so a single shape is shaded as its own mesh and mixtures by the linear blend glTF defines) as sparse
  accessors (glTF 2.0 ``accessor.sparse``: zeros but for the listed vertices): a target lists the vertices where
  some coordinate of its delta exceeds :data:`SPARSE_POSITION_M` (position) or :data:`SPARSE_NORMAL` (normal), so
  the posed head is the whole blendshapes' to 1e-4 mm (and 1e-4 of a normal) per unit of weight. ICT's shapes move
  wide areas (jawOpen the whole lower head) and leave their files' rounding elsewhere: a face target lists about
  55 % of the vertices, and ``face.glb`` is about 11 MB instead of 17 MB with whole arrays:
  the face mesh has the model's 53 expression blendshapes in the model's order, named in ARKit's style
  (:func:`reconstruct.arkit.arkit_name`: ``browDownLeft``, ``jawOpen``; ICT's split shapes keep their halves as
  ``browInnerUpLeft``, ``browInnerUpRight``, ``cheekPuffLeft``, ``cheekPuffRight``), then ``browInnerUp`` and
  ``cheekPuff`` (each the sum of its halves: weight w is both halves at w) and ``tongueOut`` (no movement: the model
  has no tongue), so all 52 of ARKit's names are there; the halves carry the fitted weights and the three extra
  targets default to 0 (do not drive a whole shape and its halves together). The teeth mesh has the targets that
  move it by more than :data:`MOVES_MM` (the jaw shapes), with the same names. Names are in
  ``mesh.extras.targetNames`` (what Blender, three.js and Babylon.js read); the fitted weights are the meshes'
  default ``weights``.
- Materials: metallic 0; the photo's texture (``coarse_texture.png``'s PNG, embedded) on the face and teeth.
- ``animation.glb``: one animation ``clip`` sampled at the frame times (seconds, LINEAR): the root's rotation and
  translation (mm at the face's depth from the image centre, x right, y up; z 0: a weak-perspective fit has no
  depth) and the face and teeth meshes' weights.
"""
from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pygltflib as gl

from facesynth.config import REPO_ROOT
from facesynth.io import atomic_write_bytes

from .arkit import MISSING, SPLIT, arkit_name, arkit_weights, write_live_link_csv
from .texture import atlas_uv

#: mm -> glTF's metres.
METRES = 1e-3
#: Mesh parts, in node order.
PARTS = ("face", "teeth", "eyeLeft", "eyeRight")
#: A target moves a part when some vertex of it moves by more than this (mm): the teeth move with the four jaw
#: shapes; the others move them by at most 0.002 mm, the rounding of ICT's files, and are left out of the teeth.
MOVES_MM = 0.01
#: A morph target's sparse accessor lists the vertices where some coordinate of its position delta exceeds this
#: (metres; 1e-4 mm): a head posed at weights w is within 1e-4 mm x sum |w| of the whole blendshapes' (the
#: astronaut's refined head at its default weights: 0.0002 mm).
SPARSE_POSITION_M = 1e-7
#: ... and of its normal delta, this (of a unit normal; 0.006 degrees).
SPARSE_NORMAL = 1e-4
#: The Node.js script that runs the Khronos glTF Validator (npm ``gltf-validator``, installed by ``make setup``).
VALIDATOR_SCRIPT = REPO_ROOT / "scripts" / "validate_gltf.mjs"
#: The panels of :func:`preview_sheet`: label -> weights by target name (the rest 0).
PREVIEW_POSES = (("neutral", {}), ("jawOpen = 1", {"jawOpen": 1.0}),
                 ("mouthSmileLeft + Right = 1", {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}))


class GltfError(ValueError):
    """A file is not a glTF binary this module wrote (or can read)."""


class ValidatorMissing(GltfError):
    """Node.js or the npm package ``gltf-validator`` is not installed."""


@dataclass(frozen=True)
class HeadSurface:
    """The head to export.

    vertices: (V, 3) mm, model frame: the whole head (every model vertex) at the expression ``weights``, refined
    where there is a refined surface; weights: (53,) the model's expression weights of ``vertices`` (the default
    morph weights); vertex_colors: (V, 3) display RGB in [0, 1] (None: the albedo model's mean skin and the fixed
    eye, teeth and mouth colours); texture_png: the UV atlas as PNG bytes (``coarse_texture.png``), or None.
    """

    vertices: np.ndarray
    weights: np.ndarray
    vertex_colors: np.ndarray | None = None
    texture_png: bytes | None = None


@dataclass(frozen=True)
class HeadTrack:
    """The head through a clip, one entry per frame with a face.

    times: (T,) seconds, increasing; weights: (T, 53) the model's expression weights; rotations: (T, 3, 3) model ->
    camera frame (:class:`render.camera.Pose`'s rotation); translations: (T, 3) mm in the camera frame (x right,
    y up, z towards the camera); head_deg: (T, 3) yaw, pitch, roll in degrees
    (:func:`render.camera.rotation_to_euler`).
    """

    times: np.ndarray
    weights: np.ndarray
    rotations: np.ndarray
    translations: np.ndarray
    head_deg: np.ndarray


@dataclass(frozen=True)
class _Part:
    """One mesh: ``ids`` (N,) the model vertex each glTF vertex copies, ``triangles`` (F, 3) into them, ``uv``
    (N, 2) glTF texture coordinates (v down) or None."""

    name: str
    ids: np.ndarray
    triangles: np.ndarray
    uv: np.ndarray | None


@lru_cache(maxsize=4)
def _parts(model) -> tuple[_Part, ...]:
    """The model's triangles split into :data:`PARTS`; the face and teeth copy a vertex per distinct UV."""
    r = model.regions
    label = np.zeros(len(model.triangles), np.int64)  # face (with the mouth socket) unless wholly in another part
    for k, region in enumerate((r["teeth"], np.concatenate([r["sclera_left"], r["iris_left"]]),
                                np.concatenate([r["sclera_right"], r["iris_right"]])), start=1):
        label[np.isin(model.triangles, region).all(1)] = k
    uv_all = atlas_uv(model)
    parts = []
    for k, name in enumerate(PARTS):
        tris, tri_uv = model.triangles[label == k], model.tri_uv[label == k]
        if name.startswith("eye"):  # no UVs: one glTF vertex per model vertex
            ids, local = np.unique(tris, return_inverse=True)
            uv = None
        else:
            pairs, local = np.unique(np.stack([tris.reshape(-1), tri_uv.reshape(-1)], 1), axis=0, return_inverse=True)
            ids = pairs[:, 0]
            uv = np.stack([uv_all[pairs[:, 1], 0], 1.0 - uv_all[pairs[:, 1], 1]], 1).astype(np.float32)
        parts.append(_Part(name, ids, local.reshape(-1, 3).astype(np.uint32), uv))
    return tuple(parts)


def target_names(model) -> list[str]:
    """The face mesh's morph target names: the 53 in the model's order (ARKit style), then ``browInnerUp``,
    ``cheekPuff``, ``tongueOut``."""
    return [arkit_name(n) for n in model.expression_names] + list(SPLIT) + list(MISSING)


def _target_weights(weights: np.ndarray) -> np.ndarray:
    """(..., 53) model weights -> (..., 56) weights of :func:`target_names` (the extra three 0)."""
    w = np.asarray(weights, np.float64)
    return np.concatenate([w, np.zeros(w.shape[:-1] + (len(SPLIT) + len(MISSING),))], -1)


@lru_cache(maxsize=4)
def _blendshapes(model) -> np.ndarray:
    """(M, V, 3) float32 mm: the position deltas of every target of :func:`target_names` over the whole head (the
    model's own numbers, kept per model)."""
    D = np.moveaxis(model.basis[:, :, model.n_identity:], -1, 0)  # (53, V, 3)
    pair = [D[model.expression_index(left)] + D[model.expression_index(right)] for left, right in SPLIT.values()]
    return np.concatenate([D, np.stack(pair), np.zeros((len(MISSING),) + D.shape[1:], np.float32)])


def _normal_deltas(model, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The change of the head's vertex normals by each target of :func:`target_names` at weight 1, and the head's
    normals: (M, V, 3), (V, 3) unit; ``base``: (V, 3) mm, the head at weights 0."""
    D = _blendshapes(model)
    n0 = model.vertex_normals(base.astype(np.float32))
    shapes = np.add(base[None], D, out=np.empty(D.shape, np.float32), dtype=np.float64, casting="unsafe")  # summed
    moved = model.vertex_normals(shapes)  # in float64 and rounded to float32, without a float64 (M, V, 3) copy
    return moved - n0[None], n0


def _largest_coordinate(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (...): the largest |coordinate| of each vector (numpy's max over a last axis of 3 is slow)."""
    a = np.abs(v)
    return np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2])


@dataclass(frozen=True)
class _SparseLists:
    """The deltas of one mesh's M morph targets over its N vertices as sparse accessors hold them: ``counts`` (M,)
    how many vertices each target lists; ``vertex`` (K,) the listed vertices, target by target, increasing within
    one; ``values`` (K, 3) float32 their deltas; ``lo``, ``hi`` (M, 3) float32 each target's min and max over all N
    (the unlisted zeros included)."""

    n: int
    counts: np.ndarray
    vertex: np.ndarray
    values: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _sparse_lists(deltas: np.ndarray, threshold: float) -> _SparseLists:
    """(M, N, 3) float32 deltas -> the vertices of each target where some coordinate exceeds ``threshold`` in
    magnitude, and their deltas."""
    M, N, _ = deltas.shape
    listed = (_largest_coordinate(deltas) > threshold).reshape(-1)  # by target, then increasing vertex
    counts = listed.reshape(M, N).sum(1)
    values = np.compress(listed, deltas.reshape(-1, 3), axis=0)
    lo, hi = np.zeros((M, 3), np.float32), np.zeros((M, 3), np.float32)  # the zeros of a partial list
    some = counts > 0
    if some.any():
        starts = (np.cumsum(counts) - counts)[some]
        lo[some], hi[some] = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
        part = counts < N
        lo[part], hi[part] = np.minimum(lo[part], 0), np.maximum(hi[part], 0)
    return _SparseLists(N, counts, np.flatnonzero(listed) % N, values, lo, hi)


@lru_cache(maxsize=4)
def _part_targets(model) -> tuple[tuple[np.ndarray, np.ndarray, _SparseLists], ...]:
    """Per part of :func:`_parts`: its targets (indices into :func:`target_names`: every one on the face, those that
    move the part by more than :data:`MOVES_MM` elsewhere), which of them move it (a target that does not is zeros),
    and their position deltas in metres as :func:`_sparse_lists` at :data:`SPARSE_POSITION_M` (the model's own
    numbers, kept per model: a later head of the same model skips this)."""
    D = _blendshapes(model)
    moved = _largest_coordinate(D)  # (M, V) mm
    out = []
    for part in _parts(model):
        moves = moved[:, part.ids].max(1) > MOVES_MM
        keep = np.arange(len(D)) if part.name == "face" else np.flatnonzero(moves)
        dp = np.take(D[keep], part.ids, axis=1) * np.float32(METRES)
        dp[~moves[keep]] = 0.0
        out.append((keep, moves[keep], _sparse_lists(dp, SPARSE_POSITION_M)))
    return tuple(out)


class _Builder:
    """A glTF document and its one binary buffer, filled accessor by accessor."""

    def __init__(self):
        self.gltf = gl.GLTF2(asset=gl.Asset(version="2.0", generator="facesynth reconstruct.gltf"))
        self.chunks: list[bytes] = []  # the buffer, in pieces (joined once, by to_bytes)
        self.size = 0

    def view(self, data: bytes, target: int | None = None) -> int:
        self.pad()
        self.gltf.bufferViews.append(gl.BufferView(buffer=0, byteOffset=self.size, byteLength=len(data),
                                                   target=target))
        self.chunks.append(data)
        self.size += len(data)
        return len(self.gltf.bufferViews) - 1

    def pad(self) -> None:
        """Zeros up to the next multiple of 4 bytes (glTF aligns every buffer view and the buffer's end)."""
        if self.size % 4:
            self.chunks.append(b"\0" * (-self.size % 4))
            self.size += len(self.chunks[-1])

    def accessor(self, array: np.ndarray, kind: str, target: int | None = gl.ARRAY_BUFFER,
                 bounds: bool = False) -> int:
        """``array`` (N, C) or (N,) float32 / uint32 -> an accessor of type ``kind`` (``VEC3``, ``SCALAR`` ...);
        ``bounds``: write min and max (POSITION, animation inputs)."""
        a = np.ascontiguousarray(array)
        ctype = {np.dtype(np.float32): gl.FLOAT, np.dtype(np.uint32): gl.UNSIGNED_INT}[a.dtype]
        acc = gl.Accessor(bufferView=self.view(a.tobytes(), target), componentType=ctype, count=len(a), type=kind)
        if bounds:
            flat = a.reshape(len(a), -1)
            acc.min, acc.max = flat.min(0).tolist(), flat.max(0).tolist()
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1

    def sparse(self, lists: _SparseLists, bounds: bool) -> list[int]:
        """``lists`` -> its M VEC3 accessors of N zeros (no buffer view), each with its sparse substitution (glTF 2.0
        ``accessor.sparse``; a target with no listed vertex: none). The M lists share one buffer view of indices
        (unsigned short, or int beyond 65536 vertices) and one of values. ``bounds``: each accessor's min and max."""
        itype, ctype = (np.uint16, gl.UNSIGNED_SHORT) if lists.n <= 1 << 16 else (np.uint32, gl.UNSIGNED_INT)
        if len(lists.values):
            indices_view = self.view(lists.vertex.astype(itype).tobytes())
            values_view = self.view(lists.values.tobytes())
        starts = np.cumsum(lists.counts) - lists.counts
        out = []
        for m, count in enumerate(lists.counts.tolist()):
            acc = gl.Accessor(componentType=gl.FLOAT, count=lists.n, type=gl.VEC3, byteOffset=None)
            if count:
                acc.sparse = gl.Sparse(
                    count=count,
                    indices=gl.AccessorSparseIndices(bufferView=indices_view, componentType=ctype,
                                                     byteOffset=int(starts[m]) * np.dtype(itype).itemsize),
                    values=gl.AccessorSparseValues(bufferView=values_view, byteOffset=int(starts[m]) * 12))
            if bounds:
                acc.min, acc.max = lists.lo[m].tolist(), lists.hi[m].tolist()
            self.gltf.accessors.append(acc)
            out.append(len(self.gltf.accessors) - 1)
        return out

    def to_bytes(self) -> bytes:
        """The GLB: its 12-byte header, the JSON chunk (pygltflib's JSON, padded with spaces to 4 bytes) and the
        BIN chunk (the buffer). The bytes pygltflib's ``save_to_bytes`` writes, without its three copies of the
        buffer."""
        self.pad()
        self.gltf.buffers = [gl.Buffer(byteLength=self.size)]
        doc = self.gltf.gltf_to_json(separators=(",", ":"), indent=None).encode("utf-8")
        doc += b" " * (-len(doc) % 4)
        return b"".join([struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(doc) + 8 + self.size),
                         struct.pack("<I4s", len(doc), b"JSON"), doc, struct.pack("<I4s", self.size, b"BIN\0"),
                         *self.chunks])


def _materials(b: _Builder, texture_png: bytes | None) -> dict[str, int]:
    """Materials by use: ``textured`` (the photo's atlas; only with a texture) and ``vertex`` (COLOR_0)."""
    out = {}
    if texture_png is not None:
        b.gltf.images.append(gl.Image(bufferView=b.view(texture_png), mimeType=gl.IMAGEPNG, name="texture"))
        b.gltf.samplers.append(gl.Sampler(magFilter=gl.LINEAR, minFilter=gl.LINEAR_MIPMAP_LINEAR,
                                          wrapS=gl.CLAMP_TO_EDGE, wrapT=gl.CLAMP_TO_EDGE))
        b.gltf.textures.append(gl.Texture(sampler=0, source=0))
        b.gltf.materials.append(gl.Material(name="photo", pbrMetallicRoughness=gl.PbrMetallicRoughness(
            baseColorTexture=gl.TextureInfo(index=0), metallicFactor=0.0, roughnessFactor=0.6)))
        out["textured"] = len(b.gltf.materials) - 1
    b.gltf.materials.append(gl.Material(name="vertex colour", pbrMetallicRoughness=gl.PbrMetallicRoughness(
        metallicFactor=0.0, roughnessFactor=0.5)))
    out["vertex"] = len(b.gltf.materials) - 1
    return out


def _build(model, head: HeadSurface, track: HeadTrack | None = None) -> bytes:
    """The GLB bytes of ``head`` (module docstring), with ``track`` as the animation ``clip``."""
    from morphable.materials import head_albedo
    from render.shading import srgb_to_linear

    verts = np.asarray(head.vertices, np.float64)
    w = np.asarray(head.weights, np.float64)
    if verts.shape != (model.n_vertices, 3) or w.shape != (model.n_expression,):
        raise ValueError(f"expected ({model.n_vertices}, 3) vertices and ({model.n_expression},) weights; got "
                         f"{verts.shape} and {w.shape}")
    base = verts - np.einsum("vck,k->vc", model.basis[:, :, model.n_identity:], w)  # the neutral expression
    dN, n0 = _normal_deltas(model, base)
    names, defaults = target_names(model), _target_weights(w)
    colors = head.vertex_colors
    if colors is None:
        skin = model.albedo_model.mean if model.albedo_model is not None else np.full(3, 0.6, np.float32)
        colors = head_albedo(model, skin)
    linear = srgb_to_linear(colors)

    b = _Builder()
    materials = _materials(b, head.texture_png)
    b.gltf.nodes.append(gl.Node(name="head", children=list(range(1, len(PARTS) + 1))))
    used: dict[str, np.ndarray] = {}  # part -> indices of its targets in `names`
    for part, (keep, moves, positions) in zip(_parts(model), _part_targets(model)):
        ids = part.ids
        eye = part.name.startswith("eye")  # its node sits at the eyeball's centre: the mean of its sclera (a ball)
        centre = base[ids[np.isin(ids, model.regions["sclera"])]].mean(0) if eye else np.zeros(3)
        attrs = gl.Attributes(POSITION=b.accessor(((base[ids] - centre) * METRES).astype(np.float32), gl.VEC3,
                                                  bounds=True),
                              NORMAL=b.accessor(n0[ids].astype(np.float32), gl.VEC3))
        textured = part.uv is not None and head.texture_png is not None
        if part.uv is not None:
            attrs.TEXCOORD_0 = b.accessor(part.uv, gl.VEC2)
        if not textured:
            attrs.COLOR_0 = b.accessor(linear[ids].astype(np.float32), gl.VEC3)
        attrs._MODEL_VERTEX = b.accessor(ids.astype(np.float32), gl.SCALAR)
        dn = np.take(dN if len(keep) == len(dN) else dN[keep], ids, axis=1)
        dn[~moves] = 0.0  # a target that does not move the part: zeros
        targets = [gl.Attributes(POSITION=p, NORMAL=n) for p, n in
                   zip(b.sparse(positions, bounds=True), b.sparse(_sparse_lists(dn, SPARSE_NORMAL), bounds=False))]
        prim = gl.Primitive(attributes=attrs, indices=b.accessor(part.triangles.reshape(-1), gl.SCALAR,
                                                                 gl.ELEMENT_ARRAY_BUFFER),
                            material=materials["textured" if textured else "vertex"], targets=targets)
        mesh = gl.Mesh(name=part.name, primitives=[prim])
        if len(keep):
            mesh.weights = defaults[keep].tolist()
            mesh.extras = {"targetNames": [names[k] for k in keep]}
            used[part.name] = keep
        b.gltf.meshes.append(mesh)
        node = gl.Node(name=part.name, mesh=len(b.gltf.meshes) - 1)
        if eye:
            node.translation = (centre * METRES).tolist()
        b.gltf.nodes.append(node)
    b.gltf.scenes.append(gl.Scene(name="head", nodes=[0]))
    b.gltf.scene = 0
    b.gltf.extras = {"units": "metres, y up, the face looking along +z (the face model's frame, mm x 1e-3)",
                     "model": str(Path(model.path).name)}
    if track is not None:
        _animation(b, track, used)
    return b.to_bytes()


def _quaternions(rotations: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations -> (T, 4) unit quaternions (x, y, z, w), each on the side of the previous one (so
    interpolation takes the short way)."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(np.asarray(rotations, np.float64)).as_quat()
    for i in range(1, len(q)):
        if np.dot(q[i], q[i - 1]) < 0:
            q[i] = -q[i]
    q = q.astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _animation(b: _Builder, track: HeadTrack, used: dict[str, np.ndarray]) -> None:
    """The animation ``clip``: the root's rotation and translation and the weights of the meshes in ``used`` (part
    -> indices of its targets in :func:`target_names`) at ``track``'s times, linearly interpolated."""
    times = np.asarray(track.times, np.float32)
    if len(times) == 0 or np.any(np.diff(times) <= 0) or times[0] < 0:
        raise ValueError("a track needs at least one frame, at increasing times >= 0")
    t = b.accessor(times, gl.SCALAR, target=None, bounds=True)
    outputs = [(0, "rotation", b.accessor(_quaternions(track.rotations), gl.VEC4, target=None)),
               (0, "translation", b.accessor((np.asarray(track.translations) * METRES).astype(np.float32), gl.VEC3,
                                             target=None))]
    weights = _target_weights(track.weights)
    for node, part in enumerate(PARTS, start=1):
        if part in used:
            outputs.append((node, "weights", b.accessor(weights[:, used[part]].reshape(-1).astype(np.float32),
                                                        gl.SCALAR, target=None)))
    b.gltf.animations.append(gl.Animation(
        name="clip",
        samplers=[gl.AnimationSampler(input=t, output=out, interpolation=gl.ANIM_LINEAR) for _, _, out in outputs],
        channels=[gl.AnimationChannel(sampler=i, target=gl.AnimationChannelTarget(node=node, path=path))
                  for i, (node, path, _) in enumerate(outputs)]))


def write_face_glb(path: str | Path, model, head: HeadSurface) -> Path:
    """``head`` as a GLB (module docstring), written atomically; returns ``path``."""
    return atomic_write_bytes(path, _build(model, head))


def write_animation_glb(path: str | Path, model, head: HeadSurface, track: HeadTrack) -> Path:
    """``head`` with ``track`` as its animation ``clip``, written atomically; returns ``path``."""
    return atomic_write_bytes(path, _build(model, head, track))


def track_from_frames(records: list[dict], expression_names: list[str], width: int, height: int) -> HeadTrack:
    """The frames of ``frames.jsonl`` (:mod:`reconstruct.video`; those without a face are left out) as a
    :class:`HeadTrack`; the translation is the model origin's image position relative to the image centre
    (``width`` x ``height`` pixels) in mm at the face (pixels / the pose's scale), z 0."""
    rows = [r for r in records if r.get("face")]
    if not rows:
        raise ValueError("no frame with a face")
    pose = [r["pose"] for r in rows]
    scale = np.array([p["scale"] for p in pose], np.float64)
    t = np.array([p["translation"] for p in pose], np.float64)
    translations = np.stack([(t[:, 0] - width / 2) / scale, (height / 2 - t[:, 1]) / scale, np.zeros(len(t))], 1)
    return HeadTrack(times=np.array([r["time"] for r in rows], np.float64),
                     weights=np.array([[r["expression"][n] for n in expression_names] for r in rows], np.float64),
                     rotations=np.array([p["rotation"] for p in pose], np.float64), translations=translations,
                     head_deg=np.array([[p["yaw_deg"], p["pitch_deg"], p["roll_deg"]] for p in pose], np.float64))


def write_clip_outputs(out: Path, records: list[dict], model, identity: np.ndarray, width: int,
                       height: int) -> list[Path]:
    """``animation.glb`` (the clip's identity, neutral, with the track of ``records`` as its animation) and
    ``blendshapes.csv`` (:func:`reconstruct.arkit.write_live_link_csv`, one row per frame with a face) in ``out``.

    Args:
        records: ``frames.jsonl``'s objects; identity: (100,) the clip's identity coefficients; width, height: the
            video's size in pixels.
    """
    track = track_from_frames(records, model.expression_names, width, height)
    zero = np.zeros(model.n_expression, np.float32)
    head = HeadSurface(model.vertices(model.join(np.asarray(identity, np.float32), zero)), zero)
    glb = write_animation_glb(out / "animation.glb", model, head, track)
    csv = write_live_link_csv(out / "blendshapes.csv", track.times,
                              arkit_weights(model.expression_names, track.weights), track.head_deg)
    return [glb, csv]


# ---------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class GlbMesh:
    """One mesh node of a GLB this module wrote, in glTF's units (metres).

    name: the node's name; origin: (3,) the node's translation in the root's frame; positions, normals: (N, 3);
    triangles: (F, 3); uv: (N, 2) or None; colors: (N, 3) linear RGB or None; model_vertex: (N,) int, the face-model
    vertex each vertex copies; target_names: (M,); target_positions, target_normals: (M, N, 3) deltas; weights:
    (M,) the defaults; texture: (H, W, 3) uint8 or None.
    """

    name: str
    origin: np.ndarray
    positions: np.ndarray
    normals: np.ndarray
    triangles: np.ndarray
    uv: np.ndarray | None
    colors: np.ndarray | None
    model_vertex: np.ndarray
    target_names: list[str]
    target_positions: np.ndarray
    target_normals: np.ndarray
    weights: np.ndarray
    texture: np.ndarray | None

    def posed(self, weights: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions (N, 3) in the root's frame (metres) and unit normals at ``weights`` by target name (None: the
        defaults; names not given are 0; a name the mesh lacks is ignored)."""
        w = self.weights if weights is None else np.array([weights.get(n, 0.0) for n in self.target_names])
        p = self.positions + np.einsum("m,mnc->nc", w, self.target_positions) + self.origin
        n = self.normals + np.einsum("m,mnc->nc", w, self.target_normals)
        return p, n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def load_glb(path: str | Path) -> gl.GLTF2:
    """Parse a GLB file (:class:`GltfError` for anything that is not one)."""
    path = Path(path)
    if not path.is_file():
        raise GltfError(f"{path}: no such file")
    try:
        g = gl.GLTF2.load_from_bytes(path.read_bytes())
        if g is None or g.binary_blob() is None:
            raise ValueError("no binary chunk")
    except Exception as e:  # pygltflib raises whatever its parsing meets
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise GltfError(f"{path}: not a glTF binary ({type(e).__name__}: {why})") from None
    return g


_NUMPY = {gl.FLOAT: np.float32, gl.UNSIGNED_INT: np.uint32, gl.UNSIGNED_SHORT: np.uint16, gl.UNSIGNED_BYTE: np.uint8}
_WIDTH = {gl.SCALAR: 1, gl.VEC2: 2, gl.VEC3: 3, gl.VEC4: 4}


def _view_array(g: gl.GLTF2, view_index: int, offset: int, count: int, dtype: np.dtype, width: int) -> np.ndarray:
    """(count, width) ``dtype`` elements of buffer view ``view_index`` from byte ``offset`` on, tightly packed or
    at the view's stride."""
    view = g.bufferViews[view_index]
    stride = view.byteStride or dtype.itemsize * width
    start = (view.byteOffset or 0) + (offset or 0)
    if count == 0:
        return np.zeros((0, width), dtype)
    raw = np.frombuffer(g.binary_blob(), np.uint8, count=stride * (count - 1) + dtype.itemsize * width, offset=start)
    out = np.lib.stride_tricks.as_strided(raw, (count, dtype.itemsize * width), (stride, 1)).copy()
    return out.view(dtype).reshape(count, width)


def _field(obj, name: str):
    """A field of a pygltflib object, or of the dict pygltflib leaves for a nested one it did not decode."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name)


def accessor_array(g: gl.GLTF2, index: int) -> np.ndarray:
    """Accessor ``index`` of ``g`` as (count, components) (SCALAR: (count,)), tightly packed or strided; zeros for
    an accessor with no buffer view; a sparse accessor's listed elements replaced by its values."""
    acc = g.accessors[index]
    dtype, width = np.dtype(_NUMPY[acc.componentType]), _WIDTH[acc.type]
    if acc.bufferView is None:
        out = np.zeros((acc.count, width), dtype)
    else:
        out = _view_array(g, acc.bufferView, acc.byteOffset, acc.count, dtype, width)
    if acc.sparse is not None:
        sparse = acc.sparse
        count, indices, values = _field(sparse, "count"), _field(sparse, "indices"), _field(sparse, "values")
        where = _view_array(g, _field(indices, "bufferView"), _field(indices, "byteOffset"), count,
                            np.dtype(_NUMPY[_field(indices, "componentType")]), 1)[:, 0]
        if where.size and (np.any(np.diff(where.astype(np.int64)) <= 0) or int(where[-1]) >= acc.count):
            raise GltfError(f"accessor {index}: sparse indices not increasing within its {acc.count} elements")
        out[where] = _view_array(g, _field(values, "bufferView"), _field(values, "byteOffset"), count, dtype, width)
    return out[:, 0] if acc.type == gl.SCALAR else out


def _image(g: gl.GLTF2, material: int | None) -> np.ndarray | None:
    from PIL import Image

    if material is None:
        return None
    info = g.materials[material].pbrMetallicRoughness.baseColorTexture
    if info is None:
        return None
    view = g.bufferViews[g.images[g.textures[info.index].source].bufferView]
    data = g.binary_blob()[view.byteOffset or 0:(view.byteOffset or 0) + view.byteLength]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _attribute(attributes, name: str) -> int:
    """An attribute's accessor index (pygltflib reads a primitive's attributes as an object, its targets' and
    application-specific ones as dict entries)."""
    return attributes[name] if isinstance(attributes, dict) else getattr(attributes, name)


def read_glb(path: str | Path) -> list[GlbMesh]:
    """The mesh nodes under the scene's root of a GLB this module wrote (:class:`GlbMesh` each, node order)."""
    g = load_glb(path)
    try:
        root = g.nodes[g.scenes[g.scene or 0].nodes[0]]
        out = []
        for child in root.children:
            node = g.nodes[child]
            if node.mesh is None:
                continue
            mesh = g.meshes[node.mesh]
            prim = mesh.primitives[0]
            a = prim.attributes
            n = a.POSITION
            targets = prim.targets or []
            names = list((mesh.extras or {}).get("targetNames", []))
            if len(names) != len(targets):
                raise GltfError(f"{path}: mesh {mesh.name} has {len(targets)} targets and {len(names)} names")
            empty = np.zeros((0,) + accessor_array(g, n).shape, np.float32)
            out.append(GlbMesh(
                name=node.name, origin=np.array(node.translation or [0.0, 0.0, 0.0], np.float64),
                positions=accessor_array(g, n).astype(np.float64), normals=accessor_array(g, a.NORMAL),
                triangles=accessor_array(g, prim.indices).reshape(-1, 3).astype(np.int64),
                uv=None if a.TEXCOORD_0 is None else accessor_array(g, a.TEXCOORD_0),
                colors=None if a.COLOR_0 is None else accessor_array(g, a.COLOR_0),
                model_vertex=accessor_array(g, _attribute(a, "_MODEL_VERTEX")).astype(np.int64),
                target_names=names,
                target_positions=(np.stack([accessor_array(g, _attribute(t, "POSITION")) for t in targets])
                                  if targets else empty),
                target_normals=(np.stack([accessor_array(g, _attribute(t, "NORMAL")) for t in targets])
                                if targets else empty),
                weights=np.array(mesh.weights or [], np.float64), texture=_image(g, prim.material)))
    except (IndexError, KeyError, TypeError, AttributeError) as e:
        raise GltfError(f"{path}: not a head this project wrote ({type(e).__name__}: {e})") from None
    if not out:
        raise GltfError(f"{path}: no mesh under the scene's root node")
    return out


# ---------------------------------------------------------------------------------------------- validation
def validate_glb(path: str | Path) -> dict:
    """The Khronos glTF Validator's report on ``path`` (its JSON: ``issues.numErrors``, ``numWarnings``,
    ``messages``), run by ``node scripts/validate_gltf.mjs``. Raises :class:`ValidatorMissing` when Node.js or the
    npm package (``make setup`` installs it into ``.node/``) is missing, :class:`GltfError` when the validator
    cannot read the file at all."""
    node = shutil.which("node")
    if node is None:
        raise ValidatorMissing("node (Node.js) not found: the glTF validator runs on it")
    res = subprocess.run([node, str(VALIDATOR_SCRIPT), str(path)], capture_output=True, text=True, timeout=600)
    why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"validator exit code {res.returncode}"
    if res.returncode == 3:
        raise ValidatorMissing(why)
    if res.returncode not in (0, 1):
        raise GltfError(why)
    return json.loads(res.stdout)


# ---------------------------------------------------------------------------------------------- pictures
def render_glb(path: str | Path, weights: dict[str, float] | None = None, size: int = 320,
               platform: str = "auto") -> np.ndarray:
    """A GLB's head seen from the front (+z, orthographic), posed at ``weights`` by target name (None: its
    defaults; names not given are 0), lit by a light above and left of the camera plus ambient light, drawn by
    pyrender offscreen (OSMesa on a CPU, EGL on a GPU: :func:`render.raster.gl_platform_name`).

    Returns:
        (size, size, 3) float in [0, 1], white background.
    """
    import os

    from render.raster import gl_platform_name

    os.environ.setdefault("PYOPENGL_PLATFORM", gl_platform_name(platform))
    import pyrender

    from .scan import _look_along

    meshes = read_glb(path)
    scene = pyrender.Scene(bg_color=np.ones(4), ambient_light=np.full(3, 0.35))
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for m in meshes:
        p, n = m.posed(weights)
        if m.texture is not None and m.uv is not None:
            material = pyrender.MetallicRoughnessMaterial(
                baseColorTexture=pyrender.Texture(source=m.texture, source_channels="RGB"), metallicFactor=0.0,
                roughnessFactor=0.7)
            prim = pyrender.Primitive(positions=p, normals=n, indices=m.triangles, material=material,
                                      texcoord_0=np.stack([m.uv[:, 0], 1.0 - m.uv[:, 1]], 1))  # OpenGL: v up
        else:
            colors = m.colors if m.colors is not None else np.full((len(p), 3), 0.6, np.float32)
            prim = pyrender.Primitive(positions=p, normals=n, indices=m.triangles, color_0=colors,
                                      material=pyrender.MetallicRoughnessMaterial(metallicFactor=0.0,
                                                                                  roughnessFactor=0.7))
        scene.add(pyrender.Mesh([prim]))
        if m.name == "face":
            lo, hi = np.minimum(lo, p.min(0)), np.maximum(hi, p.max(0))
    half = 0.52 * float(np.max(hi[:2] - lo[:2]))
    cam = np.eye(4)
    cam[:3, 3] = [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[2] + 1.0]
    scene.add(pyrender.OrthographicCamera(xmag=half, ymag=half, znear=0.01, zfar=10.0), pose=cam)
    light = np.eye(4)
    light[:3, :3] = _look_along(np.array([0.35, 0.45, 1.0]))  # pyrender's lights shine along their -z
    scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=3.0), pose=light)
    r = pyrender.OffscreenRenderer(size, size)
    try:
        color, _ = r.render(scene)
    finally:
        r.delete()
    return color[..., :3].astype(np.float32) / 255.0


def preview_sheet(path: str | Path, size: int = 320, platform: str = "auto") -> np.ndarray:
    """Three panels of a GLB's head (:data:`PREVIEW_POSES`: neutral, ``jawOpen`` 1, both smiles 1), labelled,
    side by side: (H, W, 3) float in [0, 1]."""
    from datagen.sheet import contact_sheet

    panels = [render_glb(path, weights, size, platform) for _, weights in PREVIEW_POSES]
    return contact_sheet(panels, len(panels), labels=[label for label, _ in PREVIEW_POSES])

