"""Models: f = h o g, with ``g`` giving the penultimate features that CCSA aligns."""

from domgen.models.backbones import BACKBONES, Classifier, WeightsUnavailable, build_model, input_normalization

__all__ = ["BACKBONES", "Classifier", "WeightsUnavailable", "build_model", "input_normalization"]
