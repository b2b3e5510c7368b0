"""pycolmap option objects as the classical path runs them: copied, never shared, with the
threads and held intrinsics set from a :class:`pipeline.reconstructors.colmap.ColmapOptions`
(``options`` below: read by attribute, so that worker code needs no plug-in import).
"""

from __future__ import annotations

from typing import Any

import pycolmap


def copy_options(options: Any) -> Any:
    """An independent copy of a pycolmap option object."""
    clone = type(options)()
    clone.mergedict(options.todict())
    return clone


MAPPING_THREADS = 1
"""Threads of mapping and bundle adjustment, whatever ``num_threads`` says. Ceres sums the
Schur complement in the order its threads finish when it has several (ceres-solver issues
#577, #664), so a chunk mapped on two threads lands a few tenths of a pixel of focal length
away from the same chunk on one, now and then, and incremental mapping carries that on; one
thread gives the same model every run and for every worker count. SIFT extraction and
matching use ``num_threads`` (they are deterministic on any number); the mapping of several
chunks or windows runs in parallel workers."""


def reader_options(options: Any) -> pycolmap.ImageReaderOptions:
    """The image reader of the extraction: camera model, and known intrinsics when given."""
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = options.camera_type
    if options.camera_params is not None:
        reader.camera_params = ",".join(repr(float(v)) for v in options.camera_params)
    return reader


def global_mapping_options(options: Any, *, hold_focal: bool = False
                           ) -> pycolmap.GlobalPipelineOptions:
    """A copy of the global mapping options on :data:`MAPPING_THREADS` threads; known
    intrinsics held fixed, and with ``hold_focal`` (a chunk mapped again with the chunks'
    consensus) the focal length."""
    mapping = copy_options(options.global_mapping)
    mapping.num_threads = MAPPING_THREADS
    adjustment = mapping.mapper.bundle_adjustment
    if hold_focal or options.camera_params is not None:
        adjustment.refine_focal_length = False
    if options.camera_params is not None:
        adjustment.refine_extra_params = False
    return mapping


def mapping_options(options: Any, *, hold_focal: bool = False
                    ) -> pycolmap.IncrementalPipelineOptions:
    """A copy of the mapping options on :data:`MAPPING_THREADS` threads; known intrinsics held
    fixed, and with ``hold_focal`` (a chunk mapped again with the chunks' consensus) the focal
    length."""
    mapping = copy_options(options.mapping)
    mapping.num_threads = MAPPING_THREADS
    if hold_focal:
        mapping.ba_refine_focal_length = False
    if options.camera_params is not None:  # known intrinsics stay as given
        mapping.ba_refine_focal_length = False
        mapping.ba_refine_extra_params = False
    return mapping
