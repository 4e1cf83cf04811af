"""Errors raised by the interventions package."""

from medseglens_core.errors import InvalidInput, NotFound


class InvalidSpec(InvalidInput):
    """An intervention spec that does not validate; the message lists every problem."""


class MissingReference(InvalidInput):
    """A ``patch`` edit names a cohort whose statistics were not given; pass ``reference_stats``."""


class MissingMask(InvalidInput):
    """A ``mask`` scope with no mask array, or one whose shape is not the case grid's."""


class LatentOutOfRange(InvalidInput):
    """An edit names a latent index >= the SAE's d_sae."""


class CohortMissing(NotFound):
    """A cohort folder the benchmark needs is absent from the data directory."""


class ZooEntryMissing(NotFound):
    """A model or SAE id that the zoo does not hold."""


class MissingGateSAE(InvalidInput):
    """A gate reads latents at another hook but that hook's SAE was not given."""
