"""The parts of the harness a technique may use: the training loop, the checkpoint cache, the distributed launcher.

A technique imports from `bench` only `bench.api` (the interface) and this module; tests/test_architecture.py
holds every module under techniques/ and models/ to that. So the harness may rearrange anything behind the
names below without breaking a technique, ours or a user's, and a name added here is a promise to keep it.

    from bench.api.harness import StrategyBase, train, fit_cached

Each name is imported from its harness module on first use (a module `__getattr__`), not when this module
is imported: `import bench.api` never loads the harness, and a technique that only needs the launcher
inside a method (torch.distributed is heavy) pays for it there. `bench.api/__init__` does not import this
module; the harness's own code imports its modules directly, never through here.
"""

from __future__ import annotations

from typing import Any

# The training loop (bench.training.loop): configuration, the reference trainer and its parts, the figures
# every training strategy reports, and the base class strategies share.
TRAINING_LOOP = ("RunResult", "StrategyBase", "TrainConfig", "default_config", "default_step", "equivalence",
                 "evaluate", "init_model", "max_abs_diff", "reached", "reference_weights", "sgd_steps",
                 "step_peak_mb", "summarize", "train")
# The checkpoint cache (bench.training.cache): weights keyed by content, fitted once per key.
CHECKPOINT_CACHE = ("cached_weights", "fit_cached", "model_code_digest", "plain_accuracy", "plain_key",
                    "state_digest")
# The distributed launcher (bench.training.distributed): a job of ranks, each running the strategy's run_rank.
DISTRIBUTED = ("Job", "Rank", "launch")
# Measurement helpers whose figures a technique reports in the harness's own units (bench.measure.metrics).
METRICS = ("state_dict_bytes",)
# Operator profiles mapped to module names, for a runtime's Predictor.profile (bench.measure.opprofile).
PROFILING = ("onnx_scopes", "profile_ort", "profile_torch")

__all__ = [*TRAINING_LOOP, *CHECKPOINT_CACHE, *DISTRIBUTED, *METRICS, *PROFILING]


def __getattr__(name: str) -> Any:
    if name in TRAINING_LOOP:
        from bench.training import loop as module
    elif name in CHECKPOINT_CACHE:
        from bench.training import cache as module
    elif name in DISTRIBUTED:
        from bench.training import distributed as module
    elif name in METRICS:
        from bench.measure import metrics as module
    elif name in PROFILING:
        from bench.measure import opprofile as module
    else:
        raise AttributeError(f"bench.api.harness has no {name!r}: a technique may use {', '.join(__all__)}; "
                             f"ask for a new name to be declared here rather than importing bench.training or "
                             f"bench.measure directly")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
