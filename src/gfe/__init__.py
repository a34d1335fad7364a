"""gfe: Gradient Flow Encoding, an autoencoder without an encoder.

A sample is encoded by integrating a gradient flow of the reconstruction loss in
latent space against a decoder; the decoder is trained on those latents.
"""

from .encode import Encoding, FlowEncoder, encode
from .errors import ConfigError, DataError, GFEError, ModelFileError, TrainingError
from .gradients import decoder_gradients
from .models import Conv1dDecoder, Conv2dDecoder, MLPDecoder, PCAMLPDecoder
from .persist import load_model, save_model
from .solvers import Status

__all__ = [
    "ConfigError", "Conv1dDecoder", "Conv2dDecoder", "DataError", "Encoding", "FlowEncoder", "GFE",
    "GFEError", "MLPDecoder", "ModelFileError", "PCAMLPDecoder", "Status", "TrainingError", "decoder_gradients", "encode", "load_model", "save_model",
]
__version__ = "0.1.0"


def __getattr__(name):
    """`gfe.GFE` on first use: the estimator imports scikit-learn, which the
    command line and the engine do not need (it takes seconds to import)."""
    if name == "GFE":
        from .estimator import GFE

        return GFE
    raise AttributeError(f"module 'gfe' has no attribute {name!r}")
