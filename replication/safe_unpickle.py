"""Restricted unpickler for foreign network pickles: rebuilds arrays, tensors and plain containers, never foreign code.

NVIDIA's pickles store networks as objects of their own classes (``dnnlib.tflib.network.Network`` for TensorFlow,
``torch_utils.persistence`` persistent objects for stylegan2-ada-pytorch) whose normal unpickling *executes source code
stored inside the pickle*. This reader never does: it maps exactly those classes to inert stand-ins that only record
their pickled state, rebuilds numpy arrays and torch tensors through an explicit allow-list, and refuses every other
global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) with :class:`UnsafePickleError`.

This module imports numpy only (torch is imported lazily, when a pickle actually contains tensors) and stays Python 3.7
compatible, because the legacy TensorFlow 1.15 environment (``replication/legacy_tf_crosscheck.py``) reuses it.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = [
    "UnsafePickleError",
    "TFNetworkState",
    "PersistentObjectState",
    "TorchModuleState",
    "EasyDictState",
    "RestrictedUnpickler",
    "safe_load",
    "safe_loads",
]


class UnsafePickleError(ValueError):
    """A pickle asked for a global outside the allow-list (or used an allowed one in a refused way)."""


# ---------------------------------------------------------------------------------------------------------------------
# Inert stand-ins for the foreign classes a network pickle legitimately contains.


class TFNetworkState(object):
    """Stand-in for ``dnnlib.tflib.network.Network``: holds the dict its ``__getstate__`` produced, builds nothing."""

    def __init__(self, state: Optional[Dict[str, Any]] = None) -> None:
        self.state = dict(state) if state is not None else {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError("dnnlib.tflib.network.Network state is a %s, expected a dict" % type(state).__name__)
        self.state = dict(state)

    @property
    def version(self) -> int:
        return int(self.state.get("version", 0))

    @property
    def name(self) -> str:
        return str(self.state.get("name"))

    @property
    def build_func_name(self) -> str:
        return str(self.state.get("build_func_name"))

    @property
    def build_module_src(self) -> str:
        return self.state.get("build_module_src") or ""

    @property
    def static_kwargs(self) -> Dict[str, Any]:
        return dict(self.state.get("static_kwargs") or {})

    @property
    def components(self) -> Dict[str, "TFNetworkState"]:
        comps = dict(self.state.get("components") or {})
        for key, comp in comps.items():
            if not isinstance(comp, TFNetworkState):
                raise UnsafePickleError("component %r of network %r is a %s, not a Network" % (key, self.name, type(comp).__name__))
        return comps

    @property
    def variables(self) -> List[Tuple[str, np.ndarray]]:
        return [(str(k), np.asarray(v)) for k, v in (self.state.get("variables") or [])]

    def all_variables(self) -> "collections.OrderedDict[str, np.ndarray]":
        """Own variables plus those of every component, named ``component/var`` like TF's ``Network.vars``."""
        out = collections.OrderedDict()  # type: collections.OrderedDict[str, np.ndarray]
        for name, value in self.variables:
            out[name] = value
        for comp_name, comp in self.components.items():
            for name, value in comp.all_variables().items():
                out[comp_name + "/" + name] = value
        return out

    def __repr__(self) -> str:
        return "TFNetworkState(name=%r, build_func_name=%r, %d variables)" % (
            self.name, self.build_func_name, len(self.state.get("variables") or []))


class PersistentObjectState(object):
    """What ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` would rebuild, kept as data only."""

    def __init__(self, class_name: str, state: Dict[str, Any], version: Optional[int] = None) -> None:
        self.class_name = class_name
        self.state = state
        self.version = version

    def __repr__(self) -> str:
        return "PersistentObjectState(class_name=%r)" % (self.class_name,)


class TorchModuleState(object):
    """Base of the stand-ins for ``torch.nn.modules.*`` classes: keeps the pickled ``__dict__`` and nothing else."""

    source_class = "torch.nn.modules.module.Module"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError("%s state is a %s, expected a dict" % (self.source_class, type(state).__name__))
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return "TorchModuleState(%s)" % self.source_class


class EasyDictState(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access): a plain dict here."""

    def __setstate__(self, state: Any) -> None:
        # EasyDict keeps its items in the dict itself; a non-empty instance __dict__ carries nothing we need.
        return None


_MODULE_STANDINS = {}  # type: Dict[str, type]


def _torch_module_standin(module: str, name: str) -> type:
    key = module + "." + name
    cls = _MODULE_STANDINS.get(key)
    if cls is None:
        cls = type(str(name), (TorchModuleState,), {"source_class": key, "__module__": __name__})
        _MODULE_STANDINS[key] = cls
    return cls


# ---------------------------------------------------------------------------------------------------------------------
# Guarded replacements for the reconstruction functions pickles call.


def _persistent_obj_standin(meta: Any) -> PersistentObjectState:
    if not isinstance(meta, dict):
        raise UnsafePickleError("persistent object meta is a %s, expected a dict" % type(meta).__name__)
    if meta.get("type", "class") != "class":
        raise UnsafePickleError("persistent object of type %r is not supported" % (meta.get("type"),))
    state = meta.get("state")
    if state is None:
        state = {}
    if not isinstance(state, dict):
        raise UnsafePickleError("persistent object state is a %s, expected a dict" % type(state).__name__)
    # meta['module_src'] is deliberately dropped: it is code, and we never run it.
    return PersistentObjectState(str(meta.get("class_name")), dict(state), meta.get("version"))


def _codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1'); nothing else is needed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is only allowed for latin1 byte strings")
    return text.encode("latin1")


_STANDIN_CLASSES = (TFNetworkState, TorchModuleState, EasyDictState)


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor can call any class's __new__ / __init__; only our stand-ins may pass through it.
    if not (isinstance(cls, type) and issubclass(cls, _STANDIN_CLASSES)):
        raise UnsafePickleError("copyreg._reconstructor refused for class %r" % (cls,))
    if base is object:
        return object.__new__(cls)
    if base is dict and issubclass(cls, dict):
        return dict.__new__(cls)
    raise UnsafePickleError("copyreg._reconstructor refused for base %r" % (base,))


def _numpy_reconstruct() -> Any:
    core = getattr(np, "_core", None)
    if core is None or not hasattr(core, "multiarray"):
        core = np.core
    return core.multiarray


def _torch():
    try:
        import torch  # noqa: F401  (lazy: the legacy TF environment has no torch)
    except ImportError:
        raise UnsafePickleError("this pickle contains torch tensors, but torch is not installed here")
    return torch


def _load_storage_from_bytes(data: Any) -> Any:
    torch = _torch()
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("torch.storage._load_from_bytes expects bytes")
    # torch's own _load_from_bytes uses an unrestricted torch.load; weights_only keeps the inner pickle restricted too.
    try:
        return torch.load(io.BytesIO(bytes(data)), weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError("embedded torch storage refused by weights_only loading: %s" % str(exc).splitlines()[0])


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    torch = _torch()
    if func not in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter):
        raise UnsafePickleError("torch._tensor._rebuild_from_type_v2 refused for rebuild function %r" % (func,))
    ret = func(*args)
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise UnsafePickleError("torch._tensor._rebuild_from_type_v2 refused for tensor type %r" % (new_type,))
    if type(ret) is not new_type:
        ret = ret.as_subclass(new_type)
    if state:
        raise UnsafePickleError("tensors with extra Python state are refused")
    return ret


def _torch_global(module: str, name: str) -> Any:
    torch = _torch()
    if module == "torch._utils" and name in (
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state",
    ):
        return getattr(torch._utils, name)
    if module == "torch.storage" and name == "_load_from_bytes":
        return _load_storage_from_bytes
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return _rebuild_from_type_v2
    if module == "torch" and name == "Tensor":
        return torch.Tensor
    if module in ("torch.nn.parameter", "torch.nn") and name == "Parameter":
        return torch.nn.Parameter
    if module == "torch" and name in ("Size", "device"):
        return getattr(torch, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module.startswith("torch.nn.modules.") and name.isidentifier() and name[:1].isupper():
        return _torch_module_standin(module, name)
    return None


_BUILTINS = {
    "set": set, "frozenset": frozenset, "dict": dict, "list": list, "tuple": tuple, "bytearray": bytearray,
    "bytes": bytes, "object": object, "int": int, "float": float, "complex": complex, "str": str, "bool": bool,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` answers only from an explicit allow-list (see module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 era names (protocol < 3 pickles written by Python 2 tools).
        if module == "__builtin__":
            module = "builtins"
        elif module == "copy_reg":
            module = "copyreg"
        found = self._allowed(module, name)
        if found is None:
            raise UnsafePickleError("refused to unpickle global %s.%s (not on the allow-list)" % (module, name))
        return found

    def _allowed(self, module: str, name: str) -> Any:
        if module == "builtins":
            return _BUILTINS.get(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "copyreg" and name == "_reconstructor":
            return _copyreg_reconstructor
        if module == "_codecs" and name == "encode":
            return _codecs_encode
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_numpy_reconstruct(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType") and name.isidentifier():
            return getattr(np, "dtypes", None) and getattr(np.dtypes, name, None)
        if module == "dnnlib.tflib.network" and name == "Network":
            return TFNetworkState
        if module in ("dnnlib.util", "dnnlib") and name == "EasyDict":
            return EasyDictState
        if module == "torch_utils.persistence" and name == "_reconstruct_persistent_obj":
            return _persistent_obj_standin
        if module == "torch" or module.startswith("torch."):
            return _torch_global(module, name)
        return None


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def safe_load(path_or_file: Any) -> Any:
    """Unpickle a file (path or binary file object) with :class:`RestrictedUnpickler`."""
    if hasattr(path_or_file, "read"):
        return RestrictedUnpickler(path_or_file).load()
    with open(os.fspath(path_or_file), "rb") as handle:
        return RestrictedUnpickler(handle).load()
