"""A restricted unpickler for EDM-format network pickles: tensors and persistent objects become plain data.

EDM's `torch_utils.persistence` embeds the source of every network class in the pickle and runs it on
`pickle.load`; this reader never does. `find_class` resolves only ALLOWED, each to a function here
that builds data: EDM's persistent record → `ObjectRecord` (class name, constructor kwargs, state; the
source kept only as its SHA-256), tensors → numpy arrays (storages parsed from torch's legacy bytes
here, no torch needed), torch containers → `ObjectRecord`, OrderedDict/set, numeric numpy values.
Any other global (os.system, builtins.eval, an unknown class) raises `PickleRefused` naming it,
before it can be called.
"""
import collections
import hashlib
import io
import pickle
import struct

import numpy as np

PERSISTENCE_VERSIONS = (6,)          # torch_utils.persistence._version of EDM (and StyleGAN2-ADA/3)
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy serialization magic number
_TORCH_PROTOCOL = 1001
_NUMERIC = frozenset("b1 i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8 c8 c16".split())
_STORAGES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bfloat16",
             "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
             "ByteStorage": "u1", "BoolStorage": "b1", "UntypedStorage": "u1"}


class PickleRefused(ValueError):
    """The file holds something this reader does not recognise or will not run."""


class ObjectRecord:
    """A pickled torch module as data: never instantiated, its code never run."""

    def __init__(self, class_name, module, state=None, source_sha256=""):
        self.class_name, self.module, self.source_sha256 = class_name, module, source_sha256
        self.init_args, self.init_kwargs, self.state = (), None, {}
        if state is not None:
            self.__setstate__(state)

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise PickleRefused(f"state of {self.module}.{self.class_name} is a {type(state).__name__}, not a dict")
        state = dict(state)
        self.init_args = tuple(state.pop("_init_args", None) or ())
        self.init_kwargs = state.pop("_init_kwargs", None)
        self.state = state

    @property
    def parameters(self):
        return dict(self.state.get("_parameters") or {})

    @property
    def buffers(self):
        return dict(self.state.get("_buffers") or {})

    @property
    def modules(self):
        return dict(self.state.get("_modules") or {})

    def __repr__(self):
        return f"ObjectRecord({self.module}.{self.class_name}, kwargs={self.init_kwargs})"


def named_tensors(record, prefix=""):
    """{dotted name: array} of every parameter and non-None buffer under a record (torch's state_dict names)."""
    out = {}
    for kind in ("parameters", "buffers"):
        out.update({prefix + k: v for k, v in getattr(record, kind).items() if v is not None})
    for name, child in record.modules.items():
        if isinstance(child, ObjectRecord):
            out.update(named_tensors(child, f"{prefix}{name}."))
    return out


def iter_records(record, prefix=""):
    """(dotted name, record) of a record and all its submodules."""
    yield prefix.rstrip("."), record
    for name, child in record.modules.items():
        if isinstance(child, ObjectRecord):
            yield from iter_records(child, f"{prefix}{name}.")


# ---------------------------------------------------------------------- allowed globals
def _persistent_obj(meta):
    """EDM's persistence record → ObjectRecord; the embedded module source is hashed, never run."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        kind = meta.get("type") if isinstance(meta, dict) else meta
        raise PickleRefused(f"EDM persistence record of unknown kind {kind!r}")
    if meta.get("version") not in PERSISTENCE_VERSIONS:
        raise PickleRefused(f"EDM persistence version {meta.get('version')!r} is not supported; "
                            f"supported: {PERSISTENCE_VERSIONS}")
    src = meta.get("module_src")
    digest = hashlib.sha256(src.encode()).hexdigest() if isinstance(src, str) else ""
    name = meta.get("class_name")
    if not isinstance(name, str):
        raise PickleRefused(f"EDM persistence record without a class name ({name!r})")
    return ObjectRecord(name, "<embedded source>", meta.get("state") or {}, digest)


def _torch_container(module, name):
    """A plain torch container class (NEWOBJ + BUILD) whose instances are ObjectRecords."""
    def new(cls, *args):
        if args:
            raise PickleRefused(f"{module}.{name} constructed with arguments {args!r}")
        return ObjectRecord(name, module)
    return type(name, (ObjectRecord,), {"__new__": new})


def _storage_from_bytes(data):
    """A torch storage saved in torch's legacy format (what Storage.__reduce__ writes) → 1-D numpy array."""
    if not isinstance(data, (bytes, bytearray)):
        raise PickleRefused(f"torch storage given as {type(data).__name__}, not bytes")
    f = io.BytesIO(data)
    try:
        head = [_StorageUnpickler(f).load() for _ in range(3)]
        if head[0] != _TORCH_MAGIC or head[1] != _TORCH_PROTOCOL:
            raise PickleRefused(f"torch storage with magic {head[0]!r} / protocol {head[1]!r}; expected torch's "
                                f"legacy format ({_TORCH_PROTOCOL})")
        if not (isinstance(head[2], dict) and head[2].get("little_endian")):
            raise PickleRefused("torch storage saved on a big-endian machine; only little-endian is supported")
        inner = _StorageUnpickler(f)
        inner.load()
        keys = _StorageUnpickler(f).load()
        if not isinstance(keys, list) or len(keys) != 1 or keys[0] != inner.key:
            raise PickleRefused(f"torch storage bytes hold keys {keys!r}; expected one storage")
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = inner.dtype
        raw = f.read(numel * dtype.itemsize)
    except (pickle.UnpicklingError, EOFError, struct.error) as err:
        raise PickleRefused(f"damaged torch storage ({type(err).__name__}: {err})") from None
    if numel != inner.numel or len(raw) != numel * dtype.itemsize:
        raise PickleRefused(f"torch storage truncated: {len(raw)} bytes for {inner.numel} elements of {dtype}")
    return np.frombuffer(raw, dtype).copy()


class _StorageUnpickler(pickle.Unpickler):
    """The pickles inside a storage's bytes: only torch.<X>Storage types and one ('storage', ...) persistent id."""
    key = numel = dtype = None

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGES:
            return ("storage-type", name)
        raise PickleRefused(f"torch storage bytes name the global {module}.{name}; only torch.<X>Storage is allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
                and isinstance(pid[1], tuple) and pid[1][0] == "storage-type" and pid[5] is None):
            raise PickleRefused(f"unknown persistent id in torch storage bytes: {str(pid)[:80]}")
        self.key, self.numel = pid[2], int(pid[4])
        spec = _STORAGES[pid[1][1]]
        self.dtype = np.dtype(_bfloat16() if spec == "bfloat16" else spec).newbyteorder("<")
        return None


def _bfloat16():
    import ml_dtypes   # installed with jax
    return ml_dtypes.bfloat16


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 on a numpy storage, with every index checked against its length."""
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise PickleRefused(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise PickleRefused(f"tensor with invalid size {size} / stride {stride} / offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(storage):
        raise PickleRefused(f"tensor of size {size} stride {stride} at offset {offset} overruns its storage "
                            f"of {len(storage)} elements")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter(_with_state): the parameter's array (Python attributes dropped)."""
    del requires_grad, backward_hooks, state
    if not isinstance(data, np.ndarray):
        raise PickleRefused(f"parameter rebuilt from a {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2 for plain tensors and parameters only."""
    del state
    if func not in (_rebuild_tensor, _rebuild_parameter) or new_type not in (_TENSOR, _PARAMETER):
        raise PickleRefused(f"tensor subclass {new_type!r} rebuilt by {func!r}; only torch.Tensor is allowed")
    return func(*args)


class _TypeMarker:
    """Stands for a torch class named in a pickle; not callable."""
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


_TENSOR, _PARAMETER = _TypeMarker("torch.Tensor"), _TypeMarker("torch.nn.parameter.Parameter")
_NDARRAY = _TypeMarker("numpy.ndarray")


def _dtype(spec, align=False, copy=True):
    """numpy.dtype for numeric types only (a fresh copy, so BUILD never touches numpy's singletons)."""
    try:
        dt = np.dtype(spec) if isinstance(spec, str) else None
    except TypeError:
        dt = None
    if dt is None or f"{dt.kind}{dt.itemsize}" not in _NUMERIC:
        raise PickleRefused(f"numpy dtype {spec!r} is not allowed; only numeric dtypes")
    return np.dtype(spec, align=bool(align), copy=True)


def _scalar(dtype, data=None):
    """numpy's scalar reconstruction for numeric dtypes: bytes of one element → a numpy scalar."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise PickleRefused(f"numpy scalar of dtype {dtype!r} from {type(data).__name__}; only numeric scalars")
    return np.frombuffer(data, dtype)[0]


def _array(subtype, shape, dtype_char):
    """numpy's ndarray reconstruction (then filled by BUILD); plain ndarrays only."""
    del shape, dtype_char   # BUILD sets shape, dtype (through _dtype) and data
    if subtype is not _NDARRAY:
        raise PickleRefused(f"numpy array type {subtype!r} is not allowed; only numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _ordered_dict(*args):
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, dict))):
        raise PickleRefused(f"collections.OrderedDict called with {str(args)[:80]}")
    return collections.OrderedDict(*args)


_NUMPY = {"scalar": _scalar, "_reconstruct": _array}
ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch._tensor", "Tensor"): _TENSOR, ("torch", "Tensor"): _TENSOR,
    ("torch.nn.parameter", "Parameter"): _PARAMETER,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("numpy", "dtype"): _dtype, ("numpy", "ndarray"): _NDARRAY,
    **{(f"numpy.{core}.multiarray", n): f for core in ("core", "_core") for n, f in _NUMPY.items()},
    **{("torch.nn.modules.container", n): _torch_container("torch.nn.modules.container", n)
       for n in ("ModuleDict", "ModuleList", "Sequential")},
    ("dnnlib.util", "EasyDict"): type("EasyDict", (dict,), {}),
}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class resolves only ALLOWED; no persistent ids."""

    def find_class(self, module, name):
        found = ALLOWED.get((module, name))
        if found is None:
            raise PickleRefused(f"refusing the global {module}.{name}: this reader allows only tensor rebuilds, "
                                f"EDM persistent records, torch containers, OrderedDict/set and numeric numpy "
                                f"values (nothing in the file was run)")
        return found

    def persistent_load(self, pid):
        raise PickleRefused(f"the pickle uses a persistent id ({str(pid)[:60]}): a torch.save file? EDM network "
                            f"pickles are written with plain pickle.dump")


def read_pickle(path):
    """The restricted load of a whole file; PickleRefused names what was refused or why the file is unreadable."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK"):
            raise PickleRefused(f"{path} is a zip archive (torch.save's format), not an EDM network pickle")
        try:
            return RestrictedUnpickler(f).load()
        except PickleRefused as err:
            raise PickleRefused(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, struct.error, MemoryError) as err:
            raise PickleRefused(f"{path} is truncated, damaged or not a pickle ({type(err).__name__}: "
                                f"{str(err)[:120]})") from None
