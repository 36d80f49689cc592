"""Networks by name, each with the input it expects.

`build_model("logistic_regression", in_features=13)` returns a fresh
`torch.nn.Module`. Importing this package imports no MONAI: imaging networks
are imported when first built, because `import monai` costs seconds.
"""

from medfed.models.registry import MODELS, ModelSpec, build_model, get_spec, register_model

__all__ = ["MODELS", "ModelSpec", "build_model", "get_spec", "register_model"]
