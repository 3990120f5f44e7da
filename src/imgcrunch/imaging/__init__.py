"""How images are made: variants (box, fit, format), their geometry, and one encoder module
per format, each with its settings and calibration as data. The policy that applies to every
image (loaders, orientation, colour, alpha) and the decode plan live in `imgcrunch.codec`."""

from imgcrunch.imaging.effort import Effort
from imgcrunch.imaging.formats import Format
from imgcrunch.imaging.variants import DEFAULT, MAX_VARIANTS, Fit, Variant, VariantsError

__all__ = ["DEFAULT", "MAX_VARIANTS", "Effort", "Fit", "Format", "Variant", "VariantsError"]
