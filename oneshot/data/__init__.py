"""Face datasets on disk: the format (:mod:`oneshot.data.format`), the synthetic generator
(:mod:`oneshot.data.synth`), real images and videos prepared into it (:mod:`oneshot.data.prepare`), and the
(source, target) pairs a model trains and is scored on (:mod:`oneshot.data.pairs`)."""

from .format import FORMAT, FaceDataset, FormatError, SampleWriter
from .pairs import PairSampler, collate_pairs
from .prepare import PrepareReport, find_sources, prepare
from .synth import head_pivot, synthesize

__all__ = ["FaceDataset", "FormatError", "SampleWriter", "FORMAT", "synthesize", "head_pivot", "prepare", "PrepareReport",
           "find_sources", "PairSampler", "collate_pairs"]
