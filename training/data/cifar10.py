"""CIFAR-10 in the forms people have it, decoded once into uint8 arrays (N, 32, 32, 3).

- the binary version: `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin`, fixed 3,073-byte records (a label
  byte, then 1,024 red, 1,024 green and 1,024 blue bytes), or straight from `cifar-10-binary.tar.gz`;
- the python version: `cifar-10-batches-py/` (or `cifar-10-python.tar.gz`), pickled dicts, read with an unpickler
  that admits only the numpy array reconstruction those files need;
- an image folder: `train/<class>/*.png|jpg` and `test/<class>/*` under the data folder, or the same paths inside
  `train.tar` / `test.tar` (how the real data in ../shared/data/cifar10 comes). Decoded images are cached as
  safetensors (keyed by the sha256 of the source files), so no later run decodes a JPEG again.

A bad file gets one line naming it and what is wrong (DataFormatError). `synthesize_cifar` writes generated data in
the binary format.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.cache import cache_root
from training.data.errors import DataFormatError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECORD = 1 + 32 * 32 * 3
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class CifarData:
    train_images: np.ndarray  # (N, 32, 32, 3) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    layout: str  # binary | python | folder | folder-tar
    fingerprint: str  # sha256 over the source files

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            images, labels = getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")
            if len(images) != len(labels) or len(images) == 0:
                raise ValueError(f"CIFAR-10 {name} split: {len(images)} images, {len(labels)} labels")


def load_cifar(data_dir: Path, cache_dir: Path | None = None) -> CifarData:
    """Whichever CIFAR-10 layout `data_dir` holds (see the module docstring)."""
    data_dir = Path(data_dir)
    for name, reader in (("cifar-10-batches-bin", _read_binary_dir), ("cifar-10-binary.tar.gz", _read_binary_tar),
                         ("cifar-10-batches-py", _read_python_dir), ("cifar-10-python.tar.gz", _read_python_tar)):
        if (data_dir / name).exists():
            return reader(data_dir / name)
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        return _cached(data_dir, [data_dir / "train", data_dir / "test"], "folder", cache_dir)
    if (data_dir / "train.tar").is_file() and (data_dir / "test.tar").is_file():
        return _cached(data_dir, [data_dir / "train.tar", data_dir / "test.tar"], "folder-tar", cache_dir)
    raise FileNotFoundError(f"{data_dir}: no CIFAR-10 here; expected cifar-10-batches-bin/ (or its .tar.gz), "
                            "cifar-10-batches-py/ (or its .tar.gz), train/ and test/ image folders, or train.tar "
                            "and test.tar")


# --- the binary version -------------------------------------------------------------------------------------------

def parse_binary(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) == 0 or len(raw) % RECORD:
        whole = len(raw) // RECORD
        raise DataFormatError(where, None, f"{len(raw)} bytes is not a whole number of {RECORD}-byte records "
                                           f"(record {whole + 1} is truncated)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= len(CLASSES))
    if bad.size:
        raise DataFormatError(where, None, f"record {bad[0] + 1} has label {labels[bad[0]]}; CIFAR-10 labels are 0-9")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_binary_dir(folder: Path) -> CifarData:
    files = {name: folder / f"{name}.bin" for name in (*TRAIN_BATCHES, "test_batch")}
    return _binary({name: _read_file(path) for name, path in files.items()}, str(folder), "binary")


def _read_binary_tar(archive: Path) -> CifarData:
    return _binary(_tar_members(archive, {f"{name}.bin": name for name in (*TRAIN_BATCHES, "test_batch")}),
                   str(archive), "binary")


def _binary(raws: dict[str, bytes], where: str, layout: str) -> CifarData:
    parts = {name: parse_binary(raw, f"{where}/{name}.bin") for name, raw in raws.items()}
    train = [parts[name] for name in TRAIN_BATCHES]
    return CifarData(np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train]),
                     *parts["test_batch"], CLASSES, layout, _digest(raws[name] for name in sorted(raws)))


# --- the python version -------------------------------------------------------------------------------------------

class _ArraysOnly(pickle.Unpickler):
    """The CIFAR-10 pickles hold dicts of numpy arrays, lists, strings and numbers: only numpy's array
    reconstruction (and the bytes decoding Python 3 writes into protocol-2 pickles) is let through; any other
    global (the way a pickle runs code) is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def parse_python_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataFormatError(where, None, f"not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise DataFormatError(where, None, f"expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataFormatError(where, None, f"expected keys data and labels, found {', '.join(map(str, batch))}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataFormatError(where, None, f"data of shape {data.shape} with {len(labels)} labels; expected (N, 3072)")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataFormatError(where, None, "labels outside 0-9")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _read_python_dir(folder: Path) -> CifarData:
    return _python({name: _read_file(folder / name) for name in (*TRAIN_BATCHES, "test_batch")}, str(folder))


def _read_python_tar(archive: Path) -> CifarData:
    return _python(_tar_members(archive, {name: name for name in (*TRAIN_BATCHES, "test_batch")}), str(archive))


def _python(raws: dict[str, bytes], where: str) -> CifarData:
    parts = {name: parse_python_batch(raw, f"{where}/{name}") for name, raw in raws.items()}
    train = [parts[name] for name in TRAIN_BATCHES]
    return CifarData(np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train]),
                     *parts["test_batch"], CLASSES, "python", _digest(raws[name] for name in sorted(raws)))


# --- image folders (plain or in a tar) ----------------------------------------------------------------------------

def decode_image(raw: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.size != (32, 32):
                raise DataFormatError(where, None, f"image is {image.size[0]}x{image.size[1]}, expected 32x32")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataFormatError(where, None, f"unreadable image ({exc})") from None


def _folder_items(source: Path) -> Iterator[tuple[str, str, bytes]]:
    """(where, class folder name, bytes) for every image of a split folder or a split tar, in sorted order."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield str(path), path.relative_to(source).parts[0], path.read_bytes()
        return
    with tarfile.open(source) as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            parts = Path(member.name).parts
            if Path(member.name).suffix.lower() in IMAGE_SUFFIXES and len(parts) >= 2:
                yield f"{source}:{member.name}", parts[-2], archive.extractfile(member).read()


def read_image_split(source: Path) -> tuple[np.ndarray, np.ndarray]:
    from tqdm import tqdm

    images, labels = [], []
    for where, folder, raw in tqdm(_folder_items(source), desc=f"decoding {source.name}", unit="img",
                                   mininterval=2.0, leave=False):
        if folder not in CLASSES:
            raise DataFormatError(where, None, f"unknown class folder {folder!r}; CIFAR-10 classes are "
                                               f"{', '.join(CLASSES)}")
        images.append(decode_image(raw, where))
        labels.append(CLASSES.index(folder))
    if not images:
        raise DataFormatError(source, None, "no images (expected <class>/<image>.png|jpg)")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _cached(data_dir: Path, sources: list[Path], layout: str, cache_dir: Path | None) -> CifarData:
    from safetensors.numpy import load_file, save_file

    fingerprint = _digest(_source_bytes(path) for path in sources)
    cache_dir = Path(cache_dir) if cache_dir else cache_root()
    cache = cache_dir / f"cifar10-{fingerprint[:16]}.safetensors"
    if cache.is_file():
        arrays = load_file(str(cache))
    else:
        train, test = (read_image_split(path) for path in sources)
        arrays = {"train_images": train[0], "train_labels": train[1], "test_images": test[0],
                  "test_labels": test[1]}
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            save_file(arrays, str(tmp))
            os.replace(tmp, cache)
        except OSError:  # a read-only home: decode again next time
            pass
    return CifarData(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"],
                     CLASSES, layout, fingerprint)


def _source_bytes(path: Path) -> bytes:
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).digest()
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode() + b"\0" + item.read_bytes())
    return digest.digest()


# --- shared -------------------------------------------------------------------------------------------------------

def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return path.read_bytes()


def _tar_members(archive: Path, wanted: dict[str, str]) -> dict[str, bytes]:
    """{name: bytes} of the members whose file name is a key of `wanted` (wherever they sit in the archive)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                key = Path(member.name).name
                if member.isfile() and key in wanted:
                    found[wanted[key]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataFormatError(archive, None, f"unreadable archive ({exc})") from None
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise DataFormatError(archive, None, f"missing {', '.join(missing)}")
    return found


def _digest(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(hashlib.sha256(chunk).digest())
    return digest.hexdigest()


# --- generated data -----------------------------------------------------------------------------------------------

def synthesize_cifar(out: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> list[Path]:
    """Write `cifar-10-batches-bin/` with generated images: each class its own colour, shape and texture, placed at
    a random offset with noise, so a small network learns them in a few epochs and augmentation matters."""
    rng = np.random.default_rng(seed)
    folder = Path(out) / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:32, 0:32]
    palette = rng.uniform(40, 215, size=(len(CLASSES), 3))

    def image(label: int) -> np.ndarray:
        cy, cx = rng.integers(10, 22, size=2)
        radius = 5 + label % 4 * 2
        if label % 3 == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        elif label % 3 == 1:
            mask = (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
        else:
            mask = np.abs(yy - cy) + np.abs(xx - cx) <= radius
        stripes = ((xx * (1 + label % 2) + yy * (label // 5)) // 3) % 2
        pixels = np.full((32, 32, 3), 110.0) + rng.normal(0, 18, size=(32, 32, 3))
        pixels[mask] = palette[label] + 30 * stripes[mask, None]
        return np.clip(pixels, 0, 255).astype(np.uint8)

    def batch(count: int) -> bytes:
        labels = rng.integers(0, len(CLASSES), size=count)
        images = np.stack([image(int(label)) for label in labels])  # (N, 32, 32, 3)
        planes = images.transpose(0, 3, 1, 2).reshape(count, -1)
        return np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1).tobytes()

    files = []
    per_batch = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
    for name, count in [*zip(TRAIN_BATCHES, per_batch, strict=True), ("test_batch", n_test)]:
        path = folder / f"{name}.bin"
        path.write_bytes(batch(count))
        files.append(path)
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    return [*files, folder / "batches.meta.txt"]
