"""CIFAR-10 readers (binary, python pickles, image folders and tars), their one-line errors, the decode cache, and the
batch augmentations."""

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.cifar10 import CLASSES, load_cifar, synthesize_cifar
from training.data.errors import DataFormatError
from training.data.image_augment import Augment, cutout, random_crop, random_flip, random_rotate

REAL = Path(os.environ.get("MODELYARD_DATA", "/nonexistent")) / "cifar10"


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cifar-bin")
    synthesize_cifar(out, n_train=100, n_test=30, seed=3)
    return out


def test_binary_folder_and_its_tar_gz_read_the_same(binary, tmp_path):
    data = load_cifar(binary)
    assert data.train_images.shape == (100, 32, 32, 3) and data.test_images.shape == (30, 32, 32, 3)
    assert data.train_images.dtype == np.uint8 and data.layout == "binary" and data.classes == CLASSES
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(binary / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / archive.name).write_bytes(archive.read_bytes())
    packed = load_cifar(tmp_path / "x")
    assert np.array_equal(packed.train_images, data.train_images) and packed.fingerprint == data.fingerprint


def test_binary_records_keep_the_planar_rgb_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    image = np.zeros((32, 32, 3), np.uint8)
    image[0, 1] = (10, 20, 30)  # row 0, column 1
    record = bytes([7]) + image.transpose(2, 0, 1).tobytes()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f"{name}.bin").write_bytes(record)
    data = load_cifar(tmp_path)
    assert tuple(data.train_images[0, 0, 1]) == (10, 20, 30) and data.train_labels[0] == 7


def test_a_truncated_record_or_a_bad_label_is_named(binary, tmp_path):
    import shutil

    shutil.copytree(binary / "cifar-10-batches-bin", tmp_path / "cifar-10-batches-bin")
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=r"data_batch_2.bin: .* is not a whole number of 3073-byte records"):
        load_cifar(tmp_path)
    raw = bytearray((binary / "cifar-10-batches-bin" / "data_batch_2.bin").read_bytes())
    raw[3073] = 12  # the second record's label
    batch.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="record 2 has label 12"):
        load_cifar(tmp_path)


def python_batch(images: np.ndarray, labels: list[int]) -> bytes:
    return pickle.dumps({b"batch_label": b"x", b"labels": labels,
                         b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1), b"filenames": []},
                        protocol=2)


def test_python_pickles_are_read_and_anything_but_arrays_is_refused(binary, tmp_path):
    data = load_cifar(binary)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    chunks = np.array_split(np.arange(100), 5)
    for i, rows in enumerate(chunks, start=1):
        batch_bytes = python_batch(data.train_images[rows], data.train_labels[rows].tolist())
        (folder / f"data_batch_{i}").write_bytes(batch_bytes)
    (folder / "test_batch").write_bytes(python_batch(data.test_images, data.test_labels.tolist()))
    loaded = load_cifar(tmp_path)
    assert np.array_equal(loaded.train_images, data.train_images) and loaded.layout == "python"

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch /tmp/modelyard-pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(DataFormatError, match=r"test_batch: not a CIFAR-10 python batch \(refusing to load"):
        load_cifar(tmp_path)
    assert not Path("/tmp/modelyard-pwned").exists()


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def image_folders(root: Path, data) -> None:
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            write_png(root / split / CLASSES[label] / f"{i:04d}.png", image)


def test_image_folders_and_tars_decode_once_into_the_cache(binary, tmp_path, monkeypatch):
    data = load_cifar(binary)
    folders = tmp_path / "folders"
    image_folders(folders, data)
    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path / "cache"))
    loaded = load_cifar(folders)
    order = np.lexsort((np.arange(100), data.train_labels))  # the folders list images by class, then name
    assert np.array_equal(loaded.train_images, data.train_images[order])  # PNG is lossless
    assert np.array_equal(loaded.train_labels, data.train_labels[order])
    assert loaded.layout == "folder" and len(list((tmp_path / "cache").glob("cifar10-*.safetensors"))) == 1
    tars = tmp_path / "tars"
    tars.mkdir()
    for split in ("train", "test"):
        with tarfile.open(tars / f"{split}.tar", "w") as tar:
            tar.add(folders / split, arcname=split)
    from_tar = load_cifar(tars)
    assert from_tar.layout == "folder-tar" and np.array_equal(from_tar.train_images, loaded.train_images)
    cached = len(list((tmp_path / "cache").glob("*.safetensors")))
    assert np.array_equal(load_cifar(tars).test_images, from_tar.test_images)  # read back from the cache
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == cached


@pytest.mark.parametrize("problem", ["unknown class", "not 32x32", "unreadable"])
def test_bad_image_folders_are_named_in_one_line(binary, tmp_path, monkeypatch, problem):
    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path / "cache"))
    data = load_cifar(binary)
    image_folders(tmp_path, data)
    if problem == "unknown class":
        write_png(tmp_path / "train" / "unicorn" / "0.png", data.train_images[0])
        expected = r"train/unicorn/0.png: unknown class folder 'unicorn'"
    elif problem == "not 32x32":
        write_png(tmp_path / "test" / "cat" / "big.png", np.zeros((40, 36, 3), np.uint8))
        expected = r"test/cat/big.png: image is 36x40, expected 32x32"
    else:
        (tmp_path / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        expected = r"test/dog/broken.png: unreadable image"
    with pytest.raises(DataFormatError, match=expected):
        load_cifar(tmp_path)


@pytest.mark.skipif(not (REAL / "test.tar").is_file(), reason="needs the real CIFAR-10 images (MODELYARD_DATA)")
def test_the_real_jpeg_tars_hold_every_class():
    from training.data.cifar10 import _folder_items, decode_image

    seen: dict[str, int] = {}
    for where, folder, raw in _folder_items(REAL / "test.tar"):
        if seen.get(folder, 0) < 3:
            assert decode_image(raw, where).shape == (32, 32, 3)
        seen[folder] = seen.get(folder, 0) + 1
    assert seen == {name: 500 for name in CLASSES}


# --- augmentation -------------------------------------------------------------------------------------------------

def batch(n: int = 6) -> torch.Tensor:
    return torch.arange(n * 3 * 32 * 32, dtype=torch.float32).reshape(n, 3, 32, 32) % 251


def test_crop_is_a_translation_within_the_padding():
    images = batch()
    cropped = random_crop(images, 4, torch.Generator().manual_seed(0))
    assert cropped.shape == images.shape
    centre = images[:, :, 8:24, 8:24]
    for i in range(len(images)):  # the image's centre reappears, shifted by at most 4 pixels each way
        found = any(torch.equal(cropped[i, :, 8 + dy:24 + dy, 8 + dx:24 + dx], centre[i])
                    for dy in range(-4, 5) for dx in range(-4, 5))
        assert found


def test_flip_rotate_and_cutout_act_per_image_on_the_whole_batch():
    images = batch(64)
    flipped = random_flip(images, torch.Generator().manual_seed(1))
    mirrored = [torch.equal(f, i.flip(2)) for f, i in zip(flipped, images, strict=True)]
    assert 10 < sum(mirrored) < 54 and all(m or torch.equal(f, i) for m, f, i in zip(mirrored, flipped, images,
                                                                                         strict=True))
    assert torch.allclose(random_rotate(images, 0.0), images, atol=1e-3)  # no angle, no change
    rotated = random_rotate(images, 10.0, torch.Generator().manual_seed(2))
    assert rotated.shape == images.shape and not torch.allclose(rotated, images)
    holes = cutout(torch.ones(8, 3, 32, 32), 8, torch.Generator().manual_seed(3))
    zeroed = (holes[:, 0] == 0).sum(dim=(1, 2))
    assert ((zeroed > 0) & (zeroed <= 81)).all()
    assert Augment.parse("all").kinds == ("crop", "flip", "rotate", "cutout") and Augment.parse("none").kinds == ()
    with pytest.raises(ValueError, match="unknown mixup"):
        Augment.parse("crop,mixup")
