"""Face datasets on disk: the format (:mod:`oneshot.data.format`), the synthetic generator
(:mod:`oneshot.data.synth`) and real images and videos prepared into it (:mod:`oneshot.data.prepare`)."""

from .format import FORMAT, FaceDataset, FormatError, SampleWriter
from .prepare import PrepareReport, find_sources, prepare
from .synth import head_pivot, synthesize

__all__ = ["FaceDataset", "FormatError", "SampleWriter", "FORMAT", "synthesize", "head_pivot", "prepare", "PrepareReport",
           "find_sources"]
