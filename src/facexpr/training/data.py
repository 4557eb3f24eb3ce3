"""Training data: a torch Dataset over a :class:`~facexpr.data.dataset.PreparedDataset` and a
sampler whose position can be saved and restored exactly.

Determinism, which exact resume depends on, comes from keying every random choice on
``(seed, epoch, position)`` instead of on a running generator: the sampler yields
``(epoch, position)`` pairs, and the dataset derives the flip and the target AUs of that item
from a fresh ``numpy.random.Generator`` seeded with the pair. A resumed run (or a worker
process, or another rank) therefore sees exactly the items an uninterrupted run would have seen,
whatever the number of DataLoader workers.

Horizontal flip keeps the AU vector unchanged: the 17 OpenFace AUs we use are bilateral
intensities (OpenFace estimates one value per AU for the whole face, not a left and a right one),
so mirroring the face does not change any of them. A future label set with lateralised units
(e.g. MediaPipe's ``mouthSmileLeft``/``Right`` blendshapes) would need a left/right permutation
here instead.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from facexpr.data.dataset import PreparedDataset
from facexpr.errors import ConfigError
from facexpr.expression import resolve_emotion

AU_MAX = 5.0


def to_tensor_image(rgb: NDArray[np.uint8]) -> Tensor:
    """uint8 (H,W,3) RGB -> float32 (3,H,W) in [-1, 1] (the project's torch image convention)."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def resize_rgb(rgb: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """Resize a square crop to ``size`` px (Lanczos down, bicubic up); no-op at the same size."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    from PIL import Image

    resample = Image.Resampling.LANCZOS if rgb.shape[0] > size else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb).resize((size, size), resample), dtype=np.uint8)


class ExpressionPairs(Dataset):
    """Items ``{image, aus, target_aus, index}`` for AU-conditioned training (GANimation).

    ``target_aus`` is the AU vector of a random *other* sample of the same index set, plus
    uniform noise of +-``target_noise`` (clipped to 0..5): this follows GANimation, which samples
    targets from the training distribution so G learns realistic AU combinations, with the noise
    filling the gaps between observed vectors.

    Indexed by ``(epoch, position)`` keys (see :class:`ResumableSampler`); a plain integer key is
    accepted too and means epoch 0.
    """

    def __init__(
        self,
        prepared: PreparedDataset,
        indices: Sequence[int] | NDArray[np.integer],
        size: int,
        seed: int = 0,
        flip: bool = True,
        target_noise: float = 0.1,
    ) -> None:
        self.prepared = prepared
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) < 2:
            raise ValueError("need at least two samples to draw target AUs from other samples")
        self.size = int(size)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.target_noise = float(target_noise)
        self.aus = np.ascontiguousarray(prepared.aus[self.indices], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Tensor]:
        epoch, pos = (0, int(key)) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        rng = np.random.default_rng((self.seed, epoch, pos))
        n = len(self.indices)
        i = int(self.indices[pos])
        rgb = resize_rgb(self.prepared.image(i), self.size)
        if self.flip and rng.random() < 0.5:
            rgb = rgb[:, ::-1]  # AUs are bilateral: the label does not change (module docstring)
        other = int(rng.integers(n - 1))
        other += other >= pos
        target = self.aus[other].copy()
        if self.target_noise > 0:
            target += rng.uniform(-self.target_noise, self.target_noise, target.shape).astype(np.float32)
        target = np.clip(target, 0.0, AU_MAX)
        return {
            "image": to_tensor_image(rgb),
            "aus": torch.from_numpy(self.aus[pos].copy()),
            "target_aus": torch.from_numpy(target),
            "index": torch.tensor(i),
        }


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields ``(epoch, position)`` keys and can start mid-epoch.

    Same shuffling and padding as :class:`~torch.utils.data.DistributedSampler` (one permutation
    per epoch from ``seed + epoch``, rank r takes every world-th item), so a 1-rank run is the
    usual data order. ``set_start(k)`` skips this rank's first ``k`` items of the epoch, which
    is how a resumed run continues exactly where the checkpoint was taken.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        positions = list(super().__iter__())
        epoch = int(self.epoch)
        for pos in positions[self.start :]:
            yield (epoch, int(pos))

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def samples_per_rank(n: int, world: int) -> int:
    """Items each rank sees per epoch (DistributedSampler pads to a multiple of ``world``)."""
    return math.ceil(n / world)


def ignore_sigint_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: leave Ctrl-C to the main process.

    Ctrl-C reaches the whole foreground process group; if workers died from it, the batch the
    main process is waiting for would fail instead of the loop saving a checkpoint and exiting
    cleanly. SIGTERM keeps its default: DataLoader shuts workers down with it when they do not
    exit in time, and the loop copes with workers killed by a group-wide SIGTERM.
    """
    del worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- label-conditioned families (StarGAN, SA-GAN, CycleGAN, U-Net cGAN) ----------------------------


def label_index(prepared: PreparedDataset, labels: tuple[str, ...]) -> NDArray[np.int64]:
    """Each row's label position in ``labels`` (-1: unlabelled or another expression)."""
    out = np.full(len(prepared), -1, np.int64)
    for i, text in enumerate(prepared.expressions):
        if not text:
            continue
        try:
            name = resolve_emotion(text)
        except ConfigError:
            continue
        if name in labels:
            out[i] = labels.index(name)
    return out


class LabelledImages(Dataset):
    """Items ``{image, label, target}`` (one-hot rows) for label-conditioned training, plus
    ``depth``, ``normals`` and ``mask`` (rendered from the mesh) when ``landmarks`` are given.

    The target is a uniformly drawn *other* label, keyed by ``(seed, epoch, position)`` like every
    random choice of the training data, so resumes are exact. A flip mirrors the rendered maps too.
    """

    def __init__(self, prepared: PreparedDataset, rows: NDArray[np.integer], labels: tuple[str, ...], size: int,
                 seed: int = 0, flip: bool = True, landmarks: NDArray[np.floating] | None = None) -> None:
        self.prepared = prepared
        self.rows = np.asarray(rows, np.int64)
        self.n = len(labels)
        self.index = label_index(prepared, labels)
        self.size = int(size)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.depth = None
        if landmarks is not None:
            from facexpr.training.depth_data import DepthTargets

            self.depth = DepthTargets(prepared, self.rows, landmarks, size, seed, flip=False)
            self.rows = self.depth.indices  # rows without landmarks are dropped

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Tensor]:
        epoch, pos = (0, int(key)) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        rng = np.random.default_rng((self.seed, epoch, pos))
        flipped = self.flip and rng.random() < 0.5
        row = int(self.rows[pos])
        src = int(self.index[row])
        tgt = int(rng.integers(self.n - 1))
        tgt += tgt >= src
        eye = torch.eye(self.n)
        if self.depth is not None:
            item = self.depth.item(pos, flipped)
        else:
            rgb = resize_rgb(self.prepared.image(row), self.size)
            item = {"image": to_tensor_image(rgb[:, ::-1] if flipped else rgb), "index": torch.tensor(row)}
        return {**item, "label": eye[src], "target": eye[tgt]}
