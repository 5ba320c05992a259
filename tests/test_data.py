import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxrepro import data


def write_cifar10_archive(path, images_u8, labels):
    """The official cifar-10-binary.tar.gz layout: records of 1 label byte + 3072 bytes (R, G, B planes)."""
    raw = np.concatenate([np.asarray(labels, np.uint8)[:, None],
                          images_u8.transpose(0, 3, 1, 2).reshape(len(labels), -1)], axis=1)
    with tarfile.open(path, "w:gz") as tar:
        for name, arr in [("cifar-10-batches-bin/data_batch_1.bin", raw[:6]),
                          ("cifar-10-batches-bin/data_batch_2.bin", raw[6:]),
                          ("cifar-10-batches-bin/test_batch.bin", raw[:3]),
                          ("cifar-10-batches-bin/batches.meta.txt", np.frombuffer(b"airplane\n", np.uint8))]:
            info = tarfile.TarInfo(name)
            info.size = arr.nbytes
            tar.addfile(info, io.BytesIO(arr.tobytes()))


def test_digits_are_embedded():
    images, labels = data.load_dataset("digits")
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert images.min() == -1.0 and images.max() == 1.0 and set(labels) == set(range(10))


def test_subset_is_deterministic_and_checked():
    images, labels = data.load_dataset("digits")
    a, la = data.subset(images, labels, 32, seed=0)
    b, lb = data.subset(images, labels, 32, seed=0)
    np.testing.assert_array_equal(a, b)
    idx = np.random.default_rng(0).permutation(1797)[:32]
    np.testing.assert_array_equal(la, labels[idx])
    with pytest.raises(ValueError, match=r"N=5000 must be in \[1, 1797\]"):
        data.subset(images, labels, 5000)


def test_cifar_binary_archive_in_the_manual_dir(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 10)
    os.makedirs(tmp_path / "downloads" / "manual")
    write_cifar10_archive(tmp_path / "downloads" / "manual" / "cifar-10-binary.tar.gz", imgs, labels)
    x, y = data.load_dataset("cifar10", str(tmp_path))
    np.testing.assert_array_equal(y, labels)
    # float32 x/127.5 − 1: two roundings of values ≤ 2 in magnitude, ≤ 2·u·2 = 2.4e-7; atol 1e-6
    np.testing.assert_allclose(x, imgs / 127.5 - 1.0, atol=1e-6)
    x, y = data.load_dataset("cifar10", str(tmp_path), split="test")
    assert len(x) == 3


def test_cifar_through_tfds_data_source_on_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=7, data_dir=str(tmp_path)):
        x, y = data.load_dataset("cifar10", str(tmp_path))
    assert x.shape == (7, 32, 32, 3) and x.min() >= -1 and x.max() <= 1 and y.dtype == np.int32


def test_missing_cifar_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads/manual"):
        data.load_dataset("cifar10", str(tmp_path))


def test_molrg_lies_on_its_subspaces():
    x, labels, bases = data.molrg(n=200, dim=16, rank=2, classes=3, seed=1)
    # projections and Gram matrices in float64, so only the float32 storage of x and U is left: x = U a
    # rounded (≤ u·|x|) and U rounded (≤ u per entry, ‖a‖ ≤ 5) move U Uᵀx off x by ≤ (1 + 4·√16)·u·5 ≈ 5e-6,
    # UᵀU off I by ≤ 2·√16·u ≈ 5e-7; atol 1e-5. A basis that is not orthonormal or a wrong label errs by O(1).
    flat = x.reshape(200, -1).astype(np.float64)
    b64 = bases.astype(np.float64)
    proj = np.einsum("nDd,nd->nD", b64[labels], np.einsum("nDd,nD->nd", b64[labels], flat))
    np.testing.assert_allclose(proj, flat, atol=1e-5)
    np.testing.assert_allclose(np.einsum("kDd,kDe->kde", b64, b64), np.broadcast_to(np.eye(2), (3, 2, 2)), atol=1e-5)
    np.testing.assert_array_equal(data.molrg(n=200, seed=1)[0], x)
    with pytest.raises(ValueError, match="classes"):
        data.molrg(dim=4, rank=2, classes=3)


def test_npz_round_trip_without_pickle(tmp_path):
    path = str(tmp_path / "d" / "set.npz")
    data.save_npz(path, np.ones((3, 2, 2, 1)), [0, 1, 2], seeds=np.arange(3))
    x, y = data.load_dataset(f"npz:{path}")
    assert x.shape == (3, 2, 2, 1) and list(y) == [0, 1, 2]
    with pytest.raises(FileNotFoundError):
        data.load_dataset("npz:/nonexistent.npz")
    with pytest.raises(ValueError, match="allowed: digits"):
        data.load_dataset("mnist")


@pytest.mark.parametrize("images,labels,message", [
    (np.full((4, 8, 8, 1), 200, np.uint8), np.zeros(4, np.int32), "dtype uint8 (uint8 0–255? map it with x / 127.5 − 1)"),
    (np.full((4, 8, 8, 1), 3.0, np.float32), np.zeros(4, np.int32), "must lie in [−1, 1] (±0.01), got [3, 3]"),
    (np.zeros((4, 8, 8, 1), np.complex64), np.zeros(4, np.int32), "must be real floats"),
    (np.zeros((4, 64), np.float32), np.zeros(4, np.int32), "must be [N >= 1, H, W, C], got shape (4, 64)"),
    (np.full((4, 8, 8, 1), np.nan, np.float32), np.zeros(4, np.int32), "256 non-finite values"),
    (np.zeros((4, 8, 8, 1), np.float32), np.zeros(3, np.int32), "labels must be integers [N] = [4], got int32 (3,)"),
])
def test_npz_data_is_checked_at_load(tmp_path, images, labels, message):
    path = str(tmp_path / "d.npz")
    np.savez(path, images=images, labels=labels)
    with pytest.raises(ValueError) as err:
        data.load_dataset(f"npz:{path}")
    assert message in str(err.value), str(err.value)


def test_random_bytes_are_not_an_npz_data_set(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="is not an npz data set"):
        data.load_dataset(f"npz:{path}")
