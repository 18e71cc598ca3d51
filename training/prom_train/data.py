"""Data sets: Fashion-MNIST (idx files, as Debian's dataset-fashion-mnist ships them) and any
ImageFolder tree (`train/` and `val/` with one folder per class).

Every sample is a uint8 RGB image (as a float tensor 0..255, CHW) at the model resolution,
which is what the daemon gives the engine. Fashion-MNIST's 28x28 greyscale images are
centred on a black 32x32 canvas (2 pixels each side; exact, no resampling) and repeated
into the three channels; `promctl eval` does the same, so training, the simulator and the
engine see identical pixels.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_SIDE = 32
HOLDOUT_SEED = 20261204


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an idx file (optionally gzip-compressed): uint8 data with its dimensions."""
    opener: Callable = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != count:
        raise ValueError(f"{path}: {body.size} bytes of data for dimensions {dims}")
    return body.reshape(dims)


def _idx_path(root: str, name: str) -> str:
    for candidate in (name, name + ".gz"):
        p = os.path.join(root, candidate)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(
        f"{os.path.join(root, name)}(.gz) not found: install Debian's dataset-fashion-mnist "
        "or pass --data-dir"
    )


def fashion_mnist_canvas(images: np.ndarray) -> np.ndarray:
    """28x28 uint8 images to 32x32 (black border), shape (N, 32, 32)."""
    n, h, w = images.shape
    pad = (FASHION_MNIST_SIDE - h) // 2
    out = np.zeros((n, FASHION_MNIST_SIDE, FASHION_MNIST_SIDE), dtype=np.uint8)
    out[:, pad : pad + h, pad : pad + w] = images
    return out


def load_fashion_mnist(root: str, split: str, limit: int | None = None) -> TensorDataset:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_path(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_path(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    canvas = torch.from_numpy(fashion_mnist_canvas(images))[:, None]  # N,1,32,32 uint8
    return TensorDataset(canvas, torch.from_numpy(labels.astype(np.int64)))


class ImageFolderU8(Dataset):
    """torchvision ImageFolder giving uint8 CHW tensors (training or evaluation transforms)."""

    def __init__(self, root: str, resolution: int, train: bool) -> None:
        import torchvision.transforms as T
        from torchvision.datasets import ImageFolder

        if train:
            tf = T.Compose(
                [
                    T.RandomResizedCrop(resolution),
                    T.RandomHorizontalFlip(),
                    T.PILToTensor(),
                ]
            )
        else:
            tf = T.Compose(
                [T.Resize(resolution * 256 // 224), T.CenterCrop(resolution), T.PILToTensor()]
            )
        self.inner = ImageFolder(root, transform=tf)
        self.classes = self.inner.classes

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.inner[i]
        return img, label


class CalibrationImages(Dataset):
    """Every image of a folder (recursively), for calibration only (labels are unused):
    `repeats` random resized crops of each, so a handful of photos gives varied inputs."""

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")

    def __init__(self, root: str, resolution: int, repeats: int = 8, seed: int = 0) -> None:
        import torchvision.transforms as T

        self.files = sorted(
            os.path.join(d, f)
            for d, _, names in os.walk(root)
            for f in names
            if f.lower().endswith(self.EXTENSIONS)
        )
        if not self.files:
            raise FileNotFoundError(f"{root}: no images for calibration")
        self.repeats = repeats
        self.seed = seed
        self.tf = T.Compose(
            [T.RandomResizedCrop(resolution, scale=(0.35, 1.0)), T.RandomHorizontalFlip()]
        )
        self.centre = T.Compose([T.Resize(resolution * 256 // 224), T.CenterCrop(resolution)])

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        import torchvision.transforms.functional as TF
        from PIL import Image

        img = Image.open(self.files[i % len(self.files)]).convert("RGB")
        if i < len(self.files):
            out = self.centre(img)
        else:
            torch.manual_seed(self.seed * 1_000_003 + i)
            out = self.tf(img)
        return TF.pil_to_tensor(out), 0


@dataclass
class DataSpec:
    """`fashion-mnist` or `imagefolder:PATH` (PATH/train and PATH/val)."""

    kind: str
    root: str
    labels: list[str]
    resolution: int | None  # the data set's own resolution (None: any)

    @staticmethod
    def parse(text: str, data_dir: str | None = None) -> DataSpec:
        if text == "fashion-mnist":
            return DataSpec(
                "fashion-mnist",
                data_dir or FASHION_MNIST_DIR,
                list(FASHION_MNIST_LABELS),
                FASHION_MNIST_SIDE,
            )
        if text.startswith("imagefolder:"):
            root = text.split(":", 1)[1]
            train = os.path.join(root, "train")
            if not os.path.isdir(train):
                raise FileNotFoundError(f"{train} is not a directory (expected train/ and val/)")
            classes = sorted(e.name for e in os.scandir(train) if e.is_dir())
            return DataSpec("imagefolder", root, classes, None)
        raise ValueError(f"--data {text!r}: expected 'fashion-mnist' or 'imagefolder:PATH'")

    def dataset(
        self, split: str, resolution: int, limit: int | None = None, holdout: int = 0
    ) -> Dataset:
        """`train`, `test`, or `val` (the `holdout` training images kept out of `train`)."""
        if self.kind == "fashion-mnist":
            if resolution != FASHION_MNIST_SIDE:
                raise ValueError(
                    f"Fashion-MNIST models use resolution {FASHION_MNIST_SIDE} (got {resolution})"
                )
            if split == "test" or holdout <= 0:
                if split == "val":
                    raise ValueError("a validation split needs --holdout N")
                return load_fashion_mnist(self.root, split, limit)
            full = load_fashion_mnist(self.root, "train")
            n = len(full)
            if not 0 < holdout < n:
                raise ValueError(f"--holdout {holdout}: expected 1..{n - 1}")
            # One fixed choice, whatever the run's seed, so every recipe sees the same split.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
            idx = order[:holdout] if split == "val" else order[holdout:]
            idx = idx.sort().values[:limit]
            images, labels = full.tensors
            return TensorDataset(images[idx], labels[idx])
        if holdout:
            raise ValueError("--holdout is for Fashion-MNIST; an ImageFolder tree has val/")
        sub = "train" if split == "train" else "val"
        ds: Dataset = ImageFolderU8(os.path.join(self.root, sub), resolution, split == "train")
        if limit is not None:
            ds = torch.utils.data.Subset(ds, list(range(min(limit, len(ds)))))  # type: ignore
        return ds


def to_rgb_float(images: Tensor) -> Tensor:
    """uint8 N,C,H,W (C = 1 or 3) to float N,3,H,W with values 0..255."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def augment_small(images: Tensor, generator: torch.Generator) -> Tensor:
    """Batch augmentation for small in-memory images (Fashion-MNIST): a random shift of up to
    2 pixels (zero fill) and a horizontal flip, on uint8, so pixels stay exact integers."""
    n, c, h, w = images.shape
    pad = 2
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    # One gather for the whole batch: row and column indices per image, columns reversed
    # where the image is flipped.
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flip.view(n, 1), cols.flip(-1), cols) + dx.view(n, 1)
    cols = cols.view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)
