"""Models: f = h o g, with ``g`` giving the penultimate features that CCSA aligns."""

from domgen.models.backbones import BACKBONES, Classifier, WeightsUnavailable, input_normalization
from domgen.models.init import build_model
from domgen.models import cbr  # noqa: F401  (registers the CBR backbones of Raghu et al. 2019)

__all__ = ["BACKBONES", "Classifier", "WeightsUnavailable", "build_model", "input_normalization"]
