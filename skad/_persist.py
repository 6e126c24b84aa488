"""Model files that load without running code from the file: :func:`save` / :func:`load`.

A skad model file is a zip archive: ``skad_model.json`` (a header with the versions
of skad, scikit-learn, torch and numpy, and the estimator's object tree) and one
``.npy`` file per array (read with ``allow_pickle=False``). Loading never unpickles:
objects are rebuilt from their recorded state by their class (``__new__`` then
``__setstate__``, as pickle would), and only classes of skad, scikit-learn, numpy and
scipy are accepted, by name; torch tensors are stored as arrays (skad's torch-holding
estimators keep their networks as state dicts of tensors when pickled). Anything else
(a user-defined class, a function, a torch module passed as a parameter) is refused at
save time with its path in the object tree.

Pickle (``joblib.dump`` / ``joblib.load``) still works for every estimator, but
loading a pickle runs whatever code the file names: use it only for files you made or
trust.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import tempfile
import types
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

__all__ = ["save", "load", "ModelFileError"]

FORMAT = "skad-model"
#: 2: the header holds SHA-256 digests of the object tree and of every array
FORMAT_VERSION = 2
_HEADER = "skad_model.json"
#: modules whose classes a model file may name
_ALLOWED_PREFIXES = ("skad", "sklearn", "numpy", "scipy")
#: reconstructors other than classes that scikit-learn's Cython trees pickle through
_ALLOWED_CALLABLES = {"newObj"}
_BIT_GENERATORS = ("MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64")


class ModelFileError(ValueError):
    """The file is not a skad model file, is damaged, or was written by other versions."""


def _versions():
    import sklearn
    import torch

    from . import __version__

    return {"skad": __version__, "scikit-learn": sklearn.__version__,
            "torch": torch.__version__, "numpy": np.__version__}


def _tree_digest(root):
    """SHA-256 of the object tree's canonical JSON (floats are stored as repr strings,
    so the JSON round trip is exact)."""
    text = json.dumps(root, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _public(version):
    """``2.14.1+cu130`` -> ``2.14.1``: a CUDA build's file loads on a CPU build."""
    return str(version).split("+")[0]


# --------------------------------------------------------------------------- encoding
class _Encoder:
    def __init__(self):
        self.arrays = {}

    def _array(self, a):
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.ascontiguousarray(a)
        return key

    def encode(self, obj, where):
        import torch

        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if type(obj) is int:
            return obj
        if type(obj) is bytes:
            return {"$": "bytes", "v": obj.hex()}
        if type(obj) is float:
            return {"$": "float", "v": repr(obj)}  # exact, nan and inf included
        if isinstance(obj, list) and type(obj) is list:
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if type(obj) is tuple:
            return {"$": "tuple", "v": [self.encode(v, f"{where}[{i}]")
                                        for i, v in enumerate(obj)]}
        if type(obj) in (dict, OrderedDict):
            return {"$": "dict" if type(obj) is dict else "odict",
                    "v": [[self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                          for k, v in obj.items()]}
        if type(obj) in (set, frozenset):
            return {"$": type(obj).__name__, "v": [self.encode(v, where) for v in obj]}
        if isinstance(obj, np.ndarray) and type(obj) is np.ndarray:
            if obj.dtype.hasobject:
                return {"$": "objarray", "shape": list(obj.shape),
                        "v": [self.encode(v, f"{where}[...]") for v in obj.ravel().tolist()]}
            return {"$": "ndarray", "key": self._array(obj)}
        if isinstance(obj, np.generic):
            return {"$": "npscalar", "key": self._array(np.asarray(obj))}
        if isinstance(obj, np.dtype):
            return {"$": "dtype", "key": self._array(np.empty(0, dtype=obj))}
        if isinstance(obj, torch.Tensor):
            t = obj.detach().to("cpu")
            if t.dtype == torch.bfloat16:
                return {"$": "tensor", "bf16": True,
                        "key": self._array(t.float().numpy())}
            return {"$": "tensor", "key": self._array(t.numpy().copy())}
        if isinstance(obj, torch.device):
            return {"$": "torch.device", "v": str(obj)}
        if isinstance(obj, torch.dtype):
            return {"$": "torch.dtype", "v": str(obj).removeprefix("torch.")}
        if isinstance(obj, np.random.RandomState):
            return {"$": "RandomState", "v": self.encode(obj.get_state(), where)}
        if isinstance(obj, np.random.Generator):
            bg = obj.bit_generator
            return {"$": "Generator", "bit_generator": type(bg).__name__,
                    "v": self.encode(bg.state, where)}
        if isinstance(obj, type):
            return {"$": "type", "name": self._name(obj, where)}
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                            types.ModuleType, torch.nn.Module)):
            self._refuse(obj, where)
        return self._object(obj, where)

    def _name(self, cls, where):
        mod = getattr(cls, "__module__", "") or ""
        name = f"{mod}:{cls.__qualname__}"
        # any module-level class can be named (load accepts others than skad's,
        # scikit-learn's, numpy's and scipy's only when told to trust their module)
        if not mod or mod in ("builtins", "__main__") or "<" in cls.__qualname__:
            self._refuse(cls, where)
        return name

    @staticmethod
    def _refuse(obj, where):
        raise TypeError(
            f"skad.save: cannot store {where} ({type(obj).__module__}."
            f"{type(obj).__qualname__}) safely: model files hold objects of importable "
            "classes, arrays and tensors, never functions, torch modules or classes "
            "defined in __main__ or a function. Pass a name or array instead, "
            "or, for files you trust, use joblib.dump (see doc/operating.md)"
        )

    def _object(self, obj, where):
        cls = type(obj)
        name = self._name(cls, where)
        try:
            rv = obj.__reduce_ex__(4)
        except Exception as exc:  # noqa: BLE001 -- say which object, not a bare traceback
            raise TypeError(f"skad.save: {where} ({name}) cannot be stored: {exc}") from exc
        if isinstance(rv, str):
            self._refuse(obj, where)
        func, args = rv[0], rv[1]
        state = rv[2] if len(rv) > 2 else None
        listitems = list(rv[3]) if len(rv) > 3 and rv[3] is not None else None
        dictitems = list(rv[4]) if len(rv) > 4 and rv[4] is not None else None
        node = {"$": "obj", "cls": name}
        fname = getattr(func, "__name__", "")
        # only argument-free construction (cls.__new__(cls)), then the state: a file
        # cannot make a constructor open files or run anything with its arguments
        if fname == "__newobj__" and tuple(args) == (cls,):
            pass
        elif fname in _ALLOWED_CALLABLES and getattr(func, "__module__", "").startswith(
                "sklearn.") and tuple(args) == (cls,):
            node["via"] = f"{func.__module__}:{fname}"
        else:
            raise TypeError(
                f"skad.save: {where} ({name}) is rebuilt by {func!r} when pickled, which a "
                "safe model file cannot call; use joblib.dump for files you trust"
            )
        if state is not None:
            node["state"] = self.encode(state, where)
        if listitems:
            node["list"] = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(listitems)]
        if dictitems:
            node["items"] = [[self.encode(k, where), self.encode(v, f"{where}[{k!r}]")]
                             for k, v in dictitems]
        return node


# --------------------------------------------------------------------------- decoding
def _resolve(name, path, trusted=()):
    mod_name, _, qual = name.partition(":")
    top = mod_name.split(".")[0]
    if not qual or "<" in qual:
        raise ModelFileError(f"{path}: names {name!r}, which a skad model file may not "
                             "contain; the file was not written by skad.save or was altered")
    if top not in _ALLOWED_PREFIXES and not any(
            mod_name == t or mod_name.startswith(t + ".") for t in trusted):
        raise ModelFileError(
            f"{path}: the model holds an object of class {qual!r} from module "
            f"{mod_name!r}, which is not skad, scikit-learn, numpy or scipy; if you trust "
            f"that module, load with trusted=[{mod_name!r}] (skad predict --trust "
            f"{mod_name})")
    try:
        obj = importlib.import_module(mod_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelFileError(
            f"{path}: class {name!r} does not exist in the installed packages ({exc}); "
            "the file was written by other versions of skad or scikit-learn"
        ) from exc
    return obj


class _Decoder:
    def __init__(self, zf, path, trusted=(), digests=None):
        self.zf = zf
        self.path = path
        self.trusted = tuple(trusted)
        self.digests = digests or {}

    def _array(self, key):
        with self.zf.open(f"{key}.npy") as f:
            blob = f.read()
        if hashlib.sha256(blob).hexdigest() != self.digests.get(key):
            raise ModelFileError(f"{self.path}: damaged skad model file (array {key!r} does "
                                 "not match the digest recorded when it was saved)")
        return np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)

    def decode(self, node):  # noqa: C901 -- one branch per stored kind
        import torch

        if node is None or isinstance(node, (bool, int, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        kind = node["$"]
        if kind == "float":
            return float(node["v"])
        if kind == "bytes":
            return bytes.fromhex(node["v"])
        if kind == "tuple":
            return tuple(self.decode(v) for v in node["v"])
        if kind in ("dict", "odict"):
            d = {} if kind == "dict" else OrderedDict()
            for k, v in node["v"]:
                d[self.decode(k)] = self.decode(v)
            return d
        if kind in ("set", "frozenset"):
            return (set if kind == "set" else frozenset)(self.decode(v) for v in node["v"])
        if kind == "ndarray":
            return self._array(node["key"])
        if kind == "objarray":
            out = np.empty(len(node["v"]), dtype=object)
            out[:] = [self.decode(v) for v in node["v"]]
            return out.reshape(node["shape"])
        if kind == "npscalar":
            return self._array(node["key"])[()]
        if kind == "dtype":
            return self._array(node["key"]).dtype
        if kind == "tensor":
            t = torch.from_numpy(self._array(node["key"]))
            return t.to(torch.bfloat16) if node.get("bf16") else t
        if kind == "torch.device":
            return torch.device(node["v"])
        if kind == "torch.dtype":
            dt = getattr(torch, node["v"], None)
            if not isinstance(dt, torch.dtype):
                raise ModelFileError(f"{self.path}: unknown torch dtype {node['v']!r}")
            return dt
        if kind == "RandomState":
            rs = np.random.RandomState()
            rs.set_state(self.decode(node["v"]))
            return rs
        if kind == "Generator":
            if node["bit_generator"] not in _BIT_GENERATORS:
                raise ModelFileError(f"{self.path}: unknown bit generator "
                                     f"{node['bit_generator']!r}")
            bg = getattr(np.random, node["bit_generator"])()
            bg.state = self.decode(node["v"])
            return np.random.Generator(bg)
        if kind == "type":
            cls = _resolve(node["name"], self.path, self.trusted)
            if not isinstance(cls, type):
                raise ModelFileError(f"{self.path}: {node['name']!r} is not a class")
            return cls
        if kind == "obj":
            return self._object(node)
        raise ModelFileError(f"{self.path}: unknown entry kind {kind!r}")

    def _object(self, node):
        cls = _resolve(node["cls"], self.path, self.trusted)
        if not isinstance(cls, type):
            raise ModelFileError(f"{self.path}: {node['cls']!r} is not a class")
        if "via" in node:
            func = _resolve(node["via"], self.path)
            if (getattr(func, "__name__", "") not in _ALLOWED_CALLABLES
                    or not node["via"].startswith("sklearn.")):
                raise ModelFileError(f"{self.path}: {node['via']!r} may not be called")
            obj = func(cls)
        else:
            obj = cls.__new__(cls)
        if "list" in node:
            obj.extend(self.decode(v) for v in node["list"])
        if "items" in node:
            for k, v in node["items"]:
                obj[self.decode(k)] = self.decode(v)
        if "state" in node:
            state = self.decode(node["state"])
            setstate = getattr(obj, "__setstate__", None)
            if setstate is not None:
                setstate(state)
            else:
                slots = None
                if isinstance(state, tuple) and len(state) == 2:
                    state, slots = state
                if state:
                    obj.__dict__.update(state)
                for k, v in (slots or {}).items():
                    setattr(obj, k, v)
        return obj


# --------------------------------------------------------------------------- public API
def save(model, path):
    """Write a fitted estimator to a skad model file that loads without running its code.

    The file records the versions of skad, scikit-learn, torch and numpy;
    :func:`load` refuses a file written by other versions. The file is written to a
    temporary name and renamed at the end: a failed save leaves no partial file.

    Parameters
    ----------
    model : estimator
        Any skad / scikit-learn estimator or pipeline (fitted or not) built from
        skad, scikit-learn, numpy and scipy objects (torch networks held by skad
        estimators are stored as their weights).
    path : str or path-like
        Output file (``.skad`` by convention).

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    TypeError
        If the model holds an object a safe file cannot store (a user-defined class,
        a function, a torch module passed as a parameter); the message names where.

    Examples
    --------
    >>> import tempfile, numpy as np, skad
    >>> from skad.detectors import PaDiM
    >>> X = np.random.default_rng(0).normal(size=(30, 4))
    >>> det = PaDiM(random_state=0, device="cpu").fit(X)
    >>> path = skad.save(det, tempfile.mkdtemp() + "/padim.skad")
    >>> again = skad.load(path)
    >>> bool(np.array_equal(again.score_samples(X), det.score_samples(X)))
    True
    """
    path = Path(path)
    enc = _Encoder()
    root = enc.encode(model, type(model).__name__)
    blobs = {}
    for key, arr in enc.arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        blobs[key] = buf.getvalue()
    # digests: a file edited or damaged in a way the zip's CRCs cannot see (an archive
    # rewritten with a changed header or array) is refused instead of loading an object
    # with missing or wrong state. They detect damage, not tampering: whoever edits the
    # file can recompute them (loading still runs no code from it).
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": _versions(),
              "class": f"{type(model).__module__}.{type(model).__qualname__}",
              "root_sha256": _tree_digest(root),
              "arrays_sha256": {k: hashlib.sha256(b).hexdigest() for k, b in blobs.items()},
              "root": root}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                               dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(_HEADER, json.dumps(header))
            for key, blob in blobs.items():
                zf.writestr(f"{key}.npy", blob)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path, *, trusted=(), allow_version_mismatch=False):
    """Load a model written by :func:`save`, without running code from the file.

    Parameters
    ----------
    path : str or path-like
    trusted : sequence of str, default=()
        Modules (and their submodules) besides skad, scikit-learn, numpy and scipy
        whose classes the file may name, e.g. the package of your own detector.
        Their classes are rebuilt from stored state as pickle would, so list only
        modules you trust.
    allow_version_mismatch : bool, default=False
        Load a file written by other versions of skad, scikit-learn or torch
        (with a warning) instead of refusing it. Scores may then differ.

    Returns
    -------
    model : estimator

    Raises
    ------
    ModelFileError
        (a ``ValueError``) if the file is missing, empty, truncated, not a skad model
        file (a joblib/pickle file included), or written by other versions.

    Examples
    --------
    >>> import tempfile, skad
    >>> from skad.detectors import SPADE
    >>> path = skad.save(SPADE(n_neighbors=3), tempfile.mkdtemp() + "/spade.skad")
    >>> skad.load(path)
    SPADE(n_neighbors=3)
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: the file is empty (0 bytes), not a skad model")
    not_skad = (f"{path}: not a skad model file (skad.save / `skad fit` write a zip "
                "archive holding skad_model.json)")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        with open(path, "rb") as f:
            head = f.read(2)
        hint = ""
        if head[:1] == b"\x80":  # a pickle protocol 2+ opcode: joblib / pickle
            hint = ("; it looks like a pickle (joblib.dump): load it with joblib.load "
                    "only if you trust it, then re-save with skad.save")
        raise ModelFileError(not_skad + hint + " or it is truncated") from exc
    with zf:
        try:
            header = json.loads(zf.read(_HEADER))
        except KeyError as exc:
            raise ModelFileError(not_skad) from exc
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ModelFileError(f"{path}: damaged skad model file ({exc})") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ModelFileError(not_skad)
        if header.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: skad model format {header.get('format_version')!r}; this skad "
                f"reads format {FORMAT_VERSION}: load it with the skad that wrote it")
        ours, theirs = _versions(), header.get("versions", {})
        diff = [f"{k} {theirs.get(k)} (installed: {ours[k]})" for k in
                ("skad", "scikit-learn", "torch")
                if _public(theirs.get(k)) != _public(ours[k])]
        if diff:
            msg = (f"{path} was written by " + ", ".join(diff) + ": install those versions "
                   "or refit the model (allow_version_mismatch=True loads it anyway; scores "
                   "may differ)")
            if not allow_version_mismatch:
                raise ModelFileError(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        digests = header.get("arrays_sha256")
        if (not isinstance(digests, dict) or "root" not in header
                or header.get("root_sha256") != _tree_digest(header["root"])):
            raise ModelFileError(f"{path}: damaged skad model file (its object tree does "
                                 "not match the digest recorded when it was saved)")
        try:
            with warnings.catch_warnings():
                if allow_version_mismatch:  # already warned, once
                    warnings.filterwarnings("ignore", message=".*Trying to unpickle")
                return _Decoder(zf, path, trusted, digests).decode(header["root"])
        except ModelFileError:
            raise
        # a crafted tree (digests recomputed) may still name the wrong kinds of entries
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError,
                zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelFileError(f"{path}: damaged skad model file ({type(exc).__name__}: "
                                 f"{exc})") from exc
