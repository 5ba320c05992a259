"""Data sets as float32 images in [−1, 1] [N, H, W, C] with int32 labels [N].

- digits: scikit-learn's 1,797 real 8×8 images (embedded, offline), the default.
- cifar10 / cifar100: tensorflow-datasets' prepared array_record data (`tfds.data_source`, no
  TensorFlow needed), or the official binary archive `cifar-10-binary.tar.gz` /
  `cifar-100-binary.tar.gz` placed in `<data_dir>/downloads/manual/`.
- npz:PATH: a data set saved by `save_npz` (e.g. teacher data from `--mode=generate`).
- molrg / gaussian: seeded synthetic data with known population oracles.
"""
import os
import tarfile

import numpy as np

DATASETS = ("digits", "cifar10", "cifar100", "molrg", "gaussian", "npz:<path>")
RANGE_SLACK = 0.01   # npz images may overshoot [−1, 1] by this much (e.g. unclipped generated samples)
CIFAR_ARCHIVES = {"cifar10": ("cifar-10-binary.tar.gz", 1, "data_batch_", "test_batch.bin"),
                  "cifar100": ("cifar-100-binary.tar.gz", 2, "train.bin", "test.bin")}  # archive, label bytes, train, test


def load_dataset(name, data_dir=None, split="train", **synthetic):
    """(images [N, H, W, C] float32 in [−1, 1], labels [N] int32) of a named data set."""
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        return (d.images[..., None] / 8.0 - 1.0).astype(np.float32), d.target.astype(np.int32)
    if name in CIFAR_ARCHIVES:
        return load_cifar(name, data_dir, split)
    if name.startswith("npz:"):
        return load_npz(name[4:])
    if name == "molrg":
        images, labels, _ = molrg(**synthetic)
        return images, labels
    if name == "gaussian":
        return gaussian(**synthetic), np.zeros(synthetic.get("n", 1024), np.int32)
    raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}")


def _default_data_dir(data_dir):
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def load_cifar(name, data_dir=None, split="train"):
    """CIFAR-10/100 from prepared tfds data, else from the binary archive in the manual dir."""
    data_dir = _default_data_dir(data_dir)
    archive = os.path.join(data_dir, "downloads", "manual", CIFAR_ARCHIVES[name][0])
    if os.path.exists(archive):
        return read_cifar_archive(archive, name, split)
    import tensorflow_datasets as tfds
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as err:   # tfds raises assorted errors for "not prepared"
        raise FileNotFoundError(
            f"{name} is not prepared in {data_dir} and this machine cannot download it. Either put the "
            f"official {CIFAR_ARCHIVES[name][0]} in {os.path.dirname(archive)}/ (tfds's manual_dir), or "
            f"prepare it once where the internet is reachable: pip install '.[cifar]' && "
            f"tfds build {name} --data_dir {data_dir}. ({type(err).__name__}: {str(err)[:200]})") from err
    images = np.stack([np.asarray(ex["image"], np.uint8) for ex in source])
    labels = np.array([int(ex["label"]) for ex in source], np.int32)
    return images.astype(np.float32) / 127.5 - 1.0, labels


def read_cifar_archive(path, name, split="train"):
    """Records of the official CIFAR binary format: label byte(s) then 3072 bytes CHW."""
    _, n_label, train_prefix, test_name = CIFAR_ARCHIVES[name]
    rec = n_label + 3072
    chunks = []
    with tarfile.open(path, "r:gz") as tar:
        members = sorted(m.name for m in tar.getmembers() if m.isfile())
        wanted = [m for m in members if os.path.basename(m).startswith(train_prefix)] if split == "train" \
            else [m for m in members if os.path.basename(m) == test_name]
        if not wanted:
            raise ValueError(f"{path} holds no {split} batches for {name}; members: {members[:8]}")
        for m in wanted:
            raw = np.frombuffer(tar.extractfile(m).read(), np.uint8)
            if raw.size % rec:
                raise ValueError(f"{m} in {path} is truncated: {raw.size} bytes is not a multiple of {rec}")
            chunks.append(raw.reshape(-1, rec))
    raw = np.concatenate(chunks)
    labels = raw[:, n_label - 1].astype(np.int32)          # CIFAR-100: the fine label is the second byte
    images = raw[:, n_label:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images.astype(np.float32) / 127.5 - 1.0, labels


def subset(images, labels, n, seed=0):
    """The first n examples of a fixed permutation (seeded); labels kept."""
    if n is None:
        return images, labels
    if not 1 <= n <= len(images):
        raise ValueError(f"subset size N={n} must be in [1, {len(images)}] (the data set size)")
    idx = np.random.default_rng(seed).permutation(len(images))[:n]
    return images[idx], labels[idx]


def molrg(n=1024, dim=16, rank=2, classes=3, seed=0, shape=(4, 4, 1)):
    """MoLRG data x = U_k a, a ~ N(0, I_rank), U_k orthonormal blocks of one D×D orthogonal matrix.

    Returns (x [n, *shape] float32, labels [n], bases [K, D, rank]); shape (a 4×4 "image" by
    default, so the usual figures work) must hold D values.
    """
    if classes * rank > dim:
        raise ValueError(f"need classes·rank <= dim, got {classes}·{rank} > {dim}")
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    bases = np.stack([q[:, k * rank:(k + 1) * rank] for k in range(classes)])
    labels = rng.integers(0, classes, n).astype(np.int32)
    a = rng.standard_normal((n, rank))
    x = np.einsum("nDd,nd->nD", bases[labels], a).astype(np.float32)
    return x.reshape(n, *shape), labels, bases.astype(np.float32)


def gaussian(n=1024, shape=(4, 4, 1), mu=0.0, c=0.5, seed=0):
    """Isotropic Gaussian data N(μ, c²I) [n, *shape]."""
    return (mu + c * np.random.default_rng(seed).standard_normal((n, *shape))).astype(np.float32)


def save_npz(path, images, labels, **meta):
    """Save a data set (no pickle); meta values are stored as arrays."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, images=np.asarray(images, np.float32), labels=np.asarray(labels, np.int32),
             **{k: np.asarray(v) for k, v in meta.items()})
    os.replace(tmp, path)


def load_npz(path):
    """(images, labels) of a data set written by save_npz, checked: real floats [N, H, W, C] in [−1, 1], finite."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no data set file at {path}")
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} is not an npz data set ({err})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, not an npz data set with 'images' and 'labels'")
    with f:
        if "images" not in f or "labels" not in f:
            raise ValueError(f"{path} is not a jaxrepro data set (needs arrays 'images' and 'labels', has {f.files})")
        images, labels = f["images"], f["labels"]
    return check_images(images, labels, path)


def check_images(images, labels, where="data"):
    """Refuse what training would silently misuse; returns (float32 images, int32 labels)."""
    if not np.issubdtype(images.dtype, np.floating):
        hint = " (uint8 0–255? map it with x / 127.5 − 1)" if images.dtype == np.uint8 else ""
        raise ValueError(f"{where}: images must be real floats in [−1, 1], got dtype {images.dtype}{hint}")
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"{where}: images must be [N >= 1, H, W, C], got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError(f"{where}: images hold {int(np.sum(~np.isfinite(images)))} non-finite values (NaN/inf)")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(f"{where}: images must lie in [−1, 1] (±{RANGE_SLACK}), got [{lo:.4g}, {hi:.4g}]")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers [N] = [{images.shape[0]}], got {labels.dtype} {labels.shape}")
    return images.astype(np.float32), labels.astype(np.int32)
