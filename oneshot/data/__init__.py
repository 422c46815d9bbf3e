"""Face datasets on disk: the format (:mod:`oneshot.data.format`) and the synthetic generator
(:mod:`oneshot.data.synth`)."""

from .format import FORMAT, FaceDataset, FormatError, SampleWriter
from .synth import head_pivot, synthesize

__all__ = ["FaceDataset", "FormatError", "SampleWriter", "FORMAT", "synthesize", "head_pivot"]
