"""What the released OmniGlue (preset ``omniglue-official``) needs besides our own dependencies:
TensorFlow (its SavedModels ``og_export`` and ``sp_v6``) and OpenCV (the authors resize and turn
images grey with OpenCV on uint8; other libraries round differently). Both come with the optional
extra ``omniglue-sfm[official]``; they are imported only when that preset runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType

INSTALL = 'pip install "omniglue-sfm[official]"  (tensorflow-cpu and opencv-python-headless)'
_MODULES = {"tensorflow": "TensorFlow", "cv2": "OpenCV"}


class ExtraMissingError(ImportError, ValueError):
    """A package of the ``official`` extra is not installed. A ``ValueError`` too, so the command
    line reports it as one ``error: ...`` line (exit 1, no traceback) like any other bad option."""


def _import(module: str) -> ModuleType:
    if module == "tensorflow":
        # TensorFlow's C++ start-up notices (CPU features, oneDNN) and its Python deprecation and
        # SavedModel-loading notices are no news to our users
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ExtraMissingError(
            f"the released OmniGlue (preset omniglue-official) needs {_MODULES[module]}, which is not "
            f"installed ({err}); install it with: {INSTALL}") from None


def tensorflow() -> ModuleType:
    """The ``tensorflow`` module, or :class:`ExtraMissingError` with the install command."""
    return _import("tensorflow")


def cv2() -> ModuleType:
    """The ``cv2`` module, or :class:`ExtraMissingError` with the install command."""
    return _import("cv2")


def check_installed() -> None:
    """Raise :class:`ExtraMissingError` unless every package of the extra imports (TensorFlow's
    import takes seconds: call this once, before work that needs it)."""
    for module in _MODULES:
        if not _installed(module):
            _import(module)  # raises with the message


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a ``None`` entry in
    ``sys.modules`` blocks an import, as in tests that take a package away)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
