"""``patch()`` / ``unpatch()``: oneshot's renderer inside an existing EG3D-derived code base, its files untouched.

What is swapped is the class ``ImportanceRenderer`` of the code base's renderer module, for a subclass of it
whose ``forward`` and ``run_model`` are the drop-in's (:class:`.eg3d_renderer.DropInRenderer`); every other method
and attribute stays the original's (Next3D's ``normal_forward``, GOHA's plane matrices, ...). The subclass carries
the original's module and name, so pickles (EG3D's network snapshots) name the original class and load with or
without oneshot.

* ``patch()``: the renderer modules of the known layouts (:data:`KNOWN_LAYOUTS`) and the modules named in
  ``modules=``: swapped now if imported, else when imported (an import hook); every module that already holds the
  class (``from ... import ImportanceRenderer``) is updated too. Renderers built afterwards are the drop-in,
  and so are renderers unpickled afterwards.
* ``patch(G)``: the renderers inside an already built module G (any ``nn.Module``): their class is swapped in
  place, so all their state stays.
* ``unpatch()`` / ``unpatch(G)``: everything back exactly: module attributes, the import hook, and the class of
  every renderer swapped or built while patched.

Before swapping, a renderer is checked (:func:`.eg3d_probe.probe_renderer`): copies that behave differently from
EG3D's are left alone, with a warning (known layouts) or a :class:`PatchError` (what you named).
"""

from __future__ import annotations

import copy
import copyreg
import importlib.abc
import sys
import threading
import warnings
import weakref

from torch import Tensor, nn

from .eg3d_probe import probe_renderer
from .eg3d_renderer import DropInRenderer, Settings
from .eg3d_sampling import EG3DCompatWarning

__all__ = ["patch", "unpatch", "patched_modules", "PatchError", "KNOWN_LAYOUTS"]

#: Module paths of EG3D's renderer in the code bases looked at: EG3D, Next3D (``training/``), PanoHead,
#: Portrait4D (``portrait4d/training``; both checked and refused: modified renderers); Next3D's
#: ``training_avatar_texture``; GOHA (``src/models``); Real3D-Portrait (refused: modified renderer).
KNOWN_LAYOUTS = (
    "training.volumetric_rendering.renderer",
    "training_avatar_texture.volumetric_rendering.renderer",
    "models.volumetric_rendering.renderer",
    "modules.eg3ds.volumetric_rendering.renderer",
)
CLASS_NAME = "ImportanceRenderer"


class PatchError(RuntimeError):
    """A renderer named to ``patch`` cannot be swapped (not found, or it does not behave as EG3D's)."""


class _State:
    def __init__(self):
        self.lock = threading.RLock()
        self.settings = Settings()
        self.verify = True
        self.watched: dict[str, bool] = {}  # module name -> named explicitly (errors) or a known layout (warnings)
        self.modules: dict[str, tuple] = {}  # module name -> (original class, patched class)
        self.references: list[tuple] = []  # (module, attribute, original value) replaced in other modules
        self.classes: dict = {}  # (original class, settings) -> patched class
        self.instances: "weakref.WeakSet" = weakref.WeakSet()  # every renderer of a patched class
        self.finder = None


_STATE = _State()


# -- the patched class ------------------------------------------------------------------------------------------


def _pickle_class(cls):
    """The class a patched renderer is pickled as: whatever the original's module exposes under its name (the
    original, or the patched class while the module is patched), so that the pickle names the original."""
    orig = cls._oneshot_original
    current = getattr(sys.modules.get(orig.__module__), orig.__qualname__, None)
    if current is orig or getattr(current, "_oneshot_original", None) is orig:
        return current
    return orig


def _reduce_ex(self, protocol):
    # copyreg's reconstructor (standard library, unlike a function of oneshot) builds an instance of the class the
    # pickle names, which need not be type(self) (pickle refuses that with __newobj__)
    state = self.__getstate__() if hasattr(self, "__getstate__") else self.__dict__
    return copyreg._reconstructor, (_pickle_class(type(self)), object, None), state


def _copy(self):
    new = type(self).__new__(type(self))
    new.__dict__.update(self.__dict__)
    _STATE.instances.add(new)
    return new


def _deepcopy(self, memo):
    new = type(self).__new__(type(self))
    memo[id(self)] = new
    new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
    _STATE.instances.add(new)
    return new


def patched_class(original: type, settings: Settings) -> type:
    """The drop-in subclass of a renderer class (cached per class and settings)."""
    key = (original, settings)
    cls = _STATE.classes.get(key)
    if cls is None:
        def __init__(self, *args, **kwargs):
            original.__init__(self, *args, **kwargs)
            _STATE.instances.add(self)

        def __setstate__(self, state):  # unpickled while patched: tracked too, for unpatch()
            original.__setstate__(self, state)
            _STATE.instances.add(self)

        ns = {"__module__": original.__module__, "__qualname__": original.__qualname__, "__doc__": original.__doc__,
              "__init__": __init__, "__setstate__": __setstate__, "__reduce_ex__": _reduce_ex, "__copy__": _copy,
              "__deepcopy__": _deepcopy,
              "_oneshot_original": original, "_oneshot_settings": settings}
        cls = type(original.__name__, (DropInRenderer, original), ns)
        _STATE.classes[key] = cls
    return cls


def _original_of(obj_or_cls):
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return cls.__dict__.get("_oneshot_original")


def _check(original_instance: nn.Module, patched: type) -> str | None:
    """Why the drop-in cannot stand in for this renderer, or None; compared in EG3D's mode (the switches off)."""
    if not _STATE.verify:
        return None
    dropin = copy.copy(original_instance)
    dropin.__class__ = patched_class(patched._oneshot_original, Settings(fused=patched._oneshot_settings.fused))
    return probe_renderer(original_instance, dropin)


# -- modules ----------------------------------------------------------------------------------------------------


def _replace_references(old, new) -> None:
    """Every module attribute that is `old` becomes `new` (recorded for unpatch)."""
    for mod in list(sys.modules.values()):
        d = getattr(mod, "__dict__", None)
        if not isinstance(d, dict):
            continue
        for k, v in list(d.items()):
            if v is old:
                _STATE.references.append((mod, k, old))
                setattr(mod, k, new)


def _patch_module(module, explicit: bool) -> bool:
    name = module.__name__
    if name in _STATE.modules and module.__dict__.get(CLASS_NAME) is _STATE.modules[name][1]:
        return True  # (a reloaded module defines its class anew: patched again below)
    original = module.__dict__.get(CLASS_NAME)
    fail = PatchError if explicit else None
    why = None
    if not isinstance(original, type) or not issubclass(original, nn.Module):
        why = f"it has no {CLASS_NAME} class"
    elif _original_of(original) is not None:
        return True
    else:
        patched = patched_class(original, _STATE.settings)
        if _STATE.verify:
            try:
                instance = original()
            except Exception as e:  # noqa: BLE001
                why = f"{CLASS_NAME}() cannot be built without arguments to check it ({type(e).__name__}: {e})"
            else:
                why = _check(instance, patched)
    if why is not None:
        msg = (f"oneshot.compat.eg3d: {name}.{CLASS_NAME} left as it is: {why}. It is not EG3D's renderer (or "
               f"differs from it), so swapping it would change your images; patch(verify=False) forces it.")
        if fail is not None:
            raise fail(msg)
        warnings.warn(msg, EG3DCompatWarning, stacklevel=3)
        return False
    # a reloaded module: its earlier record names the class the reload replaced
    _STATE.references = [r for r in _STATE.references if r[0] is not module or r[1] != CLASS_NAME]
    _STATE.modules[name] = (original, patched)
    _replace_references(original, patched)
    return True


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        with _STATE.lock:
            explicit = _STATE.watched.get(module.__name__)
            if explicit is not None and _STATE.finder is not None:
                try:
                    _patch_module(module, explicit=False)
                except Exception as e:  # noqa: BLE001 - never break the user's import
                    warnings.warn(f"oneshot.compat.eg3d: could not patch {module.__name__}: {e!r}", EG3DCompatWarning)

    def __getattr__(self, name):  # get_source, get_filename, ... of the wrapped loader
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _STATE.watched:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


# -- objects ----------------------------------------------------------------------------------------------------


def _looks_like_renderer(module: nn.Module) -> bool:
    """EG3D's renderer interface: ``run_model`` and the ``plane_axes`` matrices (the probe decides the rest)."""
    return callable(getattr(module, "run_model", None)) and isinstance(getattr(module, "plane_axes", None), Tensor)


def _patch_object(root: nn.Module, settings: Settings) -> int:
    found, refused = 0, []
    for name, module in list(root.named_modules()):
        if not _looks_like_renderer(module):
            continue
        original = _original_of(module) or type(module)
        if isinstance(module, DropInRenderer) and _original_of(module) is None:
            found += 1  # oneshot's own ImportanceRenderer
            continue
        patched = patched_class(original, settings)
        if type(module) is not patched:
            plain = copy.copy(module)
            plain.__class__ = original
            why = _check(plain, patched)
            if why is not None:
                refused.append(f"{name or '<root>'} ({original.__module__}.{original.__qualname__}): {why}")
                continue
            module.__class__ = patched
            _STATE.instances.add(module)
        found += 1
    if refused:
        raise PatchError("oneshot.compat.eg3d: not patched: " + "; ".join(refused)
                         + ". Such renderers differ from EG3D's; patch(G, verify=False) forces it.")
    return found


def _unpatch_object(root: nn.Module) -> None:
    for module in root.modules():
        original = _original_of(module)
        if original is not None:
            module.__class__ = original


# -- the public functions -------------------------------------------------------------------------------------


def patch(target=None, *, modules=(), plane_axes=None, deterministic=False, clip_to_box=False, fused=None,
          unknown_options="warn", verify=True):
    """Make EG3D-derived code render with oneshot's kernels; two lines at the top of a script::

        from oneshot.compat import eg3d
        eg3d.patch()

    Args:
        target (None | torch.nn.Module | str): None: the renderer modules of :data:`KNOWN_LAYOUTS` plus `modules`, now and when imported
            later (returns the names patched so far). An ``nn.Module`` (a built generator): its renderers, in
            place (returns it). A string: a module path, as ``modules=[target]``.
        modules (str | Sequence[str]): more module paths holding an EG3D ``ImportanceRenderer`` (your own copy), e.g.
            ``"mypkg.rendering.renderer"``.
        plane_axes (None | str | tuple): the drop-in's switch (see ``Settings``); None: the renderer's own planes.
        deterministic (bool): the drop-in's switch (see ``Settings``).
        clip_to_box (bool): the drop-in's switch (see ``Settings``).
        fused (bool | None): oneshot's fused setting (see ``Settings``).
        unknown_options (str): "warn", "error" or "ignore" (see ``Settings``).
        verify (bool): check each renderer against EG3D's behaviour before swapping it (see :mod:`.eg3d_probe`).

    Raises:
        PatchError: a module or object you named holds no EG3D renderer or one that behaves differently.
    """
    settings = Settings(plane_axes, deterministic, clip_to_box, fused, unknown_options)
    if isinstance(modules, str):
        modules = (modules,)
    if isinstance(target, str):
        modules, target = (*modules, target), None
    with _STATE.lock:
        _STATE.verify = bool(verify)
        if target is not None:
            if not isinstance(target, nn.Module):
                raise TypeError(f"patch() takes None, a module path or an nn.Module (a generator), got "
                                f"{type(target).__name__}")
            if _patch_object(target, settings) == 0:
                raise PatchError(f"patch(G): no EG3D ImportanceRenderer (a submodule with run_model and plane_axes) "
                                 f"inside {type(target).__name__}")
            return target
        if _STATE.modules and settings != _STATE.settings:
            _unpatch_modules()  # patched again with other switches: start from the originals
        _STATE.settings = settings
        for name in KNOWN_LAYOUTS:
            _STATE.watched.setdefault(name, False)
        for name in modules:
            _STATE.watched[name] = True
        if _STATE.finder is None:
            _STATE.finder = _Finder()
            sys.meta_path.insert(0, _STATE.finder)
        for name, explicit in list(_STATE.watched.items()):
            module = sys.modules.get(name)
            if module is not None:
                _patch_module(module, explicit)
        return sorted(_STATE.modules)


def _unpatch_modules() -> None:
    for mod, attr, old in reversed(_STATE.references):
        setattr(mod, attr, old)
    _STATE.references.clear()
    patched = {id(p): (p, o) for o, p in _STATE.modules.values()}
    for mod in list(sys.modules.values()):  # modules that imported the patched class after patch()
        d = getattr(mod, "__dict__", None)
        if isinstance(d, dict):
            for k, v in list(d.items()):
                hit = patched.get(id(v))  # by identity: never hash or compare arbitrary module attributes
                if hit is not None and hit[0] is v:
                    setattr(mod, k, hit[1])
    _STATE.modules.clear()


def unpatch(target=None) -> None:
    """Undo :func:`patch`: ``unpatch()`` restores every module attribute, removes the import hook and gives every
    renderer swapped or built while patched its original class back; ``unpatch(G)`` does the latter for G."""
    with _STATE.lock:
        if target is not None:
            if not isinstance(target, nn.Module):
                raise TypeError(f"unpatch() takes None or an nn.Module, got {type(target).__name__}")
            _unpatch_object(target)
            return
        _unpatch_modules()
        if _STATE.finder is not None:
            if _STATE.finder in sys.meta_path:
                sys.meta_path.remove(_STATE.finder)
            _STATE.finder = None
        _STATE.watched.clear()
        for r in list(_STATE.instances):
            original = _original_of(r)  # None for subclasses of a patched class: they keep it
            if original is not None:
                r.__class__ = original
        _STATE.instances = weakref.WeakSet()
        _STATE.settings = Settings()
        _STATE.verify = True


def patched_modules() -> list[str]:
    """The renderer modules currently patched."""
    return sorted(_STATE.modules)
