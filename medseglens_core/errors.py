"""The library's exception hierarchy.

Every error the core raises on bad input derives from :class:`MedSegLensError` and carries a
message a person can act on. The service maps each class to one HTTP status in one place
(``service/errors.py``); the CLI prints the message on one line.
"""


class MedSegLensError(Exception):
    """Base class of every error the core raises on bad input or bad state."""


class InvalidInput(MedSegLensError):
    """Input that is well-formed but not acceptable (wrong value, wrong combination)."""


class NotFound(MedSegLensError):
    """A named thing (model, SAE, case, latent, hook point) does not exist."""


class TooLarge(MedSegLensError):
    """Input over a configured size limit (bytes or voxels)."""
