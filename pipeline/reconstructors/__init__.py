"""Layer 6, ways of reconstructing a batch of windows, behind one small interface: the base class
(:mod:`.base`), the registry (:mod:`.registry`) and the plug-ins (``vggt``, ``da3``,
``colmap``). Imports the layers below.

A reconstructor receives windows that share frame count and image size, each with a *staging
folder* that already holds ``images/`` (links to the window's frames, named as in the COLMAP
model). It writes the window's COLMAP model into ``staging/sparse/`` and returns one
:class:`WindowResult` per window. A failure inside one window is caught and returned as a failed
result; it never stops the other windows.
"""

from ..core.results import STATUS_FAILED as STATUS_FAILED  # re-exported: the plug-ins' values
from ..core.results import STATUS_OK as STATUS_OK
from ..core.results import BatchReport as BatchReport
from ..core.results import WindowResult as WindowResult
from .base import Reconstructor as Reconstructor
from .base import colmap_log_level as colmap_log_level
from .registry import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from .registry import available_reconstructors as available_reconstructors
from .registry import build_reconstructor as build_reconstructor
from .registry import create_reconstructor as create_reconstructor
from .registry import flag_rank as flag_rank
from .registry import flag_readers as flag_readers
from .registry import reconstructor_class as reconstructor_class
from .registry import reconstructor_options as reconstructor_options
from .registry import registered_flags as registered_flags
from .registry import unread_options as unread_options
