"""Face datasets on disk: the format (:mod:`oneshot.data.format`) and the synthetic generator
(:mod:`oneshot.data.synth`)."""

from .format import FORMAT, FaceDataset, FormatError, SampleWriter
from .synth import synthesize

__all__ = ["FaceDataset", "FormatError", "SampleWriter", "FORMAT", "synthesize"]
