"""Reference ConvNets and the model registry: `register`, `spec`, `create`, `list`.

The registry itself lives in `bench.api` (the harness finds models by name, like a user's); this
package registers the reference nets and re-exports the functions a model author uses.
"""

from __future__ import annotations

from bench.api import MODELS, ModelSpec
from bench.api import create_model as create
from bench.api import model_spec as spec
from bench.api import register_model as register

__all__ = ["ModelSpec", "create", "list", "register", "spec", "unregister"]
ACCELBENCH_BUILTIN = True   # tells bench.api's registry this is the project's package, not another `models`


def list() -> list[str]:  # noqa: A001 - mirrors techniques.names(); shadowing is local to this module
    return MODELS.names()


def unregister(name: str) -> None:
    """For tests that register a throwaway model."""
    MODELS.unregister(name)


from models import convnets as _convnets  # noqa: E402,F401  (registers the reference nets)
