"""gfe: Gradient Flow Encoding, an autoencoder without an encoder.

A sample is encoded by integrating a gradient flow of the reconstruction loss in
latent space against a decoder; the decoder is trained on those latents.
"""

import importlib
import sys
import types

# Each name is imported from its module on first use, so that `import gfe` and
# `gfe --help` load neither PyTorch nor scikit-learn (seconds each; measured by
# `gfe bench startup`).
_EXPORTS = {
    "ConfigError": "errors", "DataError": "errors", "GFEError": "errors", "ModelFileError": "errors",
    "TrainingError": "errors", "Encoding": "encode", "FlowEncoder": "encode", "encode": "encode",
    "decoder_gradients": "gradients", "Conv1dDecoder": "models", "Conv2dDecoder": "models",
    "MLPDecoder": "models", "PCAMLPDecoder": "models", "load_model": "persist", "save_model": "persist",
    "Status": "solvers", "GFE": "estimator",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gfe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})


class _Facade(types.ModuleType):
    """Importing the submodule `gfe.encode` would set the attribute `gfe.encode` to
    that module; the facade's `gfe.encode` stays the function, as it was when
    this file imported it eagerly."""

    def __setattr__(self, name, value):
        if not (name in _EXPORTS and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade
