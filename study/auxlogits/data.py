"""Digit images for the auxiliary-logit experiment: sklearn's 8x8 digits or MNIST IDX files.

Both sources return float32 images flattened to one row each, with pixels
scaled to [0, 1], and int64 labels 0-9.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from study.auxlogits.config import DatasetConfig
from study.errors import StudyError

# Magic numbers of the IDX format: two zero bytes, the type code 0x08 (unsigned byte), then the number of dimensions.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitData:
    """Train and test images (rows of pixels in [0, 1]) with their labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    eval_set: str
    sha256: str

    @property
    def input_size(self) -> int:
        return int(self.train_x.shape[1])


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (gzip allowed) into a uint8 array, validating its header and size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise StudyError(f"IDX file not found: {path}; check the MNIST folder") from None
    except (OSError, EOFError) as error:
        raise StudyError(f"could not read IDX file {path}: {error}; download it again") from None

    if len(data) < 4:
        raise StudyError(f"IDX file {path} is only {len(data)} bytes long; download it again")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise StudyError(
            f"invalid magic number 0x{magic:08x} in IDX file {path}, expected 0x{expected_magic:08x}; "
            "check that the file is an uncompressed or .gz MNIST IDX file of the right kind (images or labels)"
        )

    dimensions = magic & 0xFF
    header_size = 4 + 4 * dimensions
    if len(data) < header_size:
        raise StudyError(f"IDX file {path} ends inside its header; download it again")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dimensions))
    expected_bytes = header_size + int(np.prod(shape))
    if len(data) != expected_bytes:
        raise StudyError(
            f"IDX file {path} has {len(data)} bytes but its header {shape} implies {expected_bytes}; "
            "the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def _find_idx_file(folder: Path, stem: str) -> Path:
    # Some mirrors name the files with a dot before "idx" (train-images.idx3-ubyte).
    dotted = stem.replace("-idx", ".idx")
    candidates = [folder / name for base in (stem, dotted) for name in (base, base + ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise StudyError(
        f"MNIST file {stem} (or {stem}.gz) not found in {folder}; "
        f"the folder must contain {', '.join(MNIST_FILES.values())}"
    )


def load_mnist_idx(folder: Path) -> DigitData:
    """Load MNIST from a folder with the four standard IDX files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StudyError(f"MNIST folder not found: {folder}; pass the folder that contains {MNIST_FILES['train_images']}")

    paths = {key: _find_idx_file(folder, stem) for key, stem in MNIST_FILES.items()}
    arrays = {}
    for key, path in paths.items():
        magic = IDX_IMAGES_MAGIC if key.endswith("images") else IDX_LABELS_MAGIC
        arrays[key] = read_idx(path, magic)

    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        labels = arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise StudyError(
                f"{paths[f'{split}_images']} contains images of shape {images.shape[1:]}, expected 28x28; "
                "point --mnist-dir at the standard MNIST files"
            )
        if len(images) != len(labels):
            raise StudyError(
                f"{paths[f'{split}_images']} has {len(images)} images but {paths[f'{split}_labels']} "
                f"has {len(labels)} labels; the files come from different sets"
            )
        if labels.size and labels.max() >= NUM_CLASSES:
            raise StudyError(f"{paths[f'{split}_labels']} contains label {int(labels.max())}; MNIST labels are 0-9")

    return _make_data(
        name="mnist-idx",
        train_images=arrays["train_images"].reshape(len(arrays["train_images"]), -1).astype(np.float32) / 255.0,
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"].reshape(len(arrays["test_images"]), -1).astype(np.float32) / 255.0,
        test_labels=arrays["test_labels"],
        eval_set="mnist-t10k",
    )


def load_sklearn_digits(image_side: int, test_fraction: float, split_seed: int) -> DigitData:
    """Load scikit-learn's bundled 8x8 digits, resize them and split them into train and test sets."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel intensities in this set are integers 0-16.
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)
    if image_side != 8:
        images = torch.nn.functional.interpolate(
            images[:, None], size=(image_side, image_side), mode="bilinear", align_corners=False
        )[:, 0].clamp(0.0, 1.0)
    flat = images.reshape(len(images), -1).numpy()

    train_x, test_x, train_y, test_y = train_test_split(
        flat, digits.target, test_size=test_fraction, random_state=split_seed, stratify=digits.target
    )
    return _make_data(
        name="sklearn-digits",
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        eval_set=f"sklearn-digits-{image_side}px-test",
    )


def _make_data(name, train_images, train_labels, test_images, test_labels, eval_set) -> DigitData:
    arrays = [
        np.ascontiguousarray(train_images, dtype=np.float32),
        np.ascontiguousarray(train_labels, dtype=np.int64),
        np.ascontiguousarray(test_images, dtype=np.float32),
        np.ascontiguousarray(test_labels, dtype=np.int64),
    ]
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    tensors = [torch.from_numpy(array) for array in arrays]
    return DigitData(name, *tensors, eval_set=eval_set, sha256=digest.hexdigest())


def load_data(config: DatasetConfig) -> DigitData:
    """Load the images the dataset section names."""
    if config.name == "mnist-idx":
        return load_mnist_idx(config.path)
    return load_sklearn_digits(config.image_side, config.test_fraction, config.split_seed)
