"""The interface between the harness and its plugins: techniques, models, their registries and errors.

This package imports nothing else from the project. Techniques (`techniques/`, or a user's package)
and models depend on it; the harness depends on it; nothing here depends back. The harness reaches
the built-in techniques and models the way it reaches a user's: by name, through the registries,
which import the `techniques` and `models` packages on first use like any other plugin.

One module per concept, every public name re-exported here (`from bench.api import X`):

- `errors`: UserError, NotApplicable and the message texts plugins share;
- `registry`: the Registry behind both decorators, and loading `package.module:object` / `file.py:object`;
- `context`: what a technique sees (Env, Context, Predictor) and the words for formats, layouts and fidelity;
- `kinds`: Technique and its three kinds (Transform, Runtime, TrainingStrategy), the technique registry, `register`;
- `modelspec`: ModelSpec, `register_model`, this run's model overrides, output selection;
- `process`: worker start-up (process_setup / apply_process_setup, load_registries).

`bench.api.harness` is apart: the parts of the harness a technique may use (the training loop, the
checkpoint cache, the distributed launcher), imported on first use. It is not imported here.
"""

from __future__ import annotations

from bench.api.context import (APPROXIMATE, CHANNELS_LAST, CONTIGUOUS, EXACT, EXACT_TOLERANCE, FLOAT, FORMAT_WORDS,
                               MEMORY_FORMAT_WORDS, TORCH_INT8, Context, Env, Predictor)
from bench.api.errors import NEEDS_LABELS, NotApplicable, PluginImportError, UserError
from bench.api.kinds import (KINDS, TECHNIQUES, Runtime, Technique, TrainingStrategy, Transform, Unimportable,
                             register, technique)
from bench.api.modelspec import (MODELS, OVERRIDES, ModelOverrides, ModelSpec, OutputSelectorError,
                                 configure_models, create_model, model_overrides, model_spec, register_model,
                                 select_output)
from bench.api.process import apply_process_setup, load_registries, process_setup
from bench.api.registry import Registry, import_plugin, load_object, plugin_modules

__all__ = [
    "APPROXIMATE", "CHANNELS_LAST", "CONTIGUOUS", "EXACT", "EXACT_TOLERANCE", "FLOAT", "FORMAT_WORDS", "KINDS",
    "MEMORY_FORMAT_WORDS", "MODELS", "NEEDS_LABELS", "OVERRIDES",
    "TECHNIQUES", "TORCH_INT8", "Context", "Env", "ModelOverrides", "ModelSpec", "NotApplicable",
    "OutputSelectorError", "PluginImportError", "Predictor", "Registry", "Runtime", "Technique", "TrainingStrategy", "Transform",
    "Unimportable", "UserError", "apply_process_setup", "configure_models", "create_model", "import_plugin",
    "load_object", "load_registries", "model_overrides", "model_spec", "plugin_modules", "process_setup",
    "register", "register_model", "select_output", "technique",
]
