"""What a technique sees: the machine (Env), the cell it prepares for (Context), what a runtime returns
(Predictor), and the words for module formats and output fidelity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Env:
    """What this machine can do, as techniques need to know it (see bench.env.detect)."""

    cuda: bool = False
    cuda_device: str | None = None
    cuda_count: int = 0
    cpu_count: int = 1
    ort_providers: tuple[str, ...] = ()
    has_cxx: bool = False


# The layout a pipeline's input batches arrive in. A transform declares what it hands on
# (Transform.produces_memory_format) and a technique what it takes (accepts_memory_formats), so a
# runtime that cannot take a layout is refused when the pipeline is parsed, like a module format.
CONTIGUOUS = "contiguous"          # NCHW, torch's default strides
CHANNELS_LAST = "channels_last"    # NHWC strides (torch.channels_last)
MEMORY_FORMAT_WORDS = {CONTIGUOUS: "NCHW (contiguous) inputs", CHANNELS_LAST: "channels_last (NHWC) inputs"}


@dataclass(frozen=True)
class Context:
    """What a technique may use while it prepares: the data (for fine-tuning or calibration), the
    model's name and input shape, the machine, and whether this is a --quick run. Frozen: the harness
    makes one per part of a pipeline, and no part passes anything to the next through it."""

    model_name: str
    data: Any                      # bench.data.Dataset (its `spec` is what another process loads it by)
    env: Env
    batch_size: int = 1
    quick: bool = False
    seed: int = 0
    scratch_dir: Any = None        # a pathlib.Path private to this cell, for exported files
    threads: int = 0               # torch intra-op threads of the cell (0: torch's default)
    # The layout this part's inputs arrive in, as the transforms before it declare it (the harness
    # sets it; see CONTIGUOUS): torch runtimes place every batch in it, outside the timed call, as a
    # NHWC data loader would.
    memory_format: str = CONTIGUOUS

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.data.input_shape

    def place_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the pipeline's input layout (NCHW, or NHWC strides for channels_last)."""
        if self.memory_format == CHANNELS_LAST and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def _identity(x: Any) -> Any:
    return x


def _noop() -> None:
    return None


@dataclass
class Predictor:
    """A prepared model: `run` is the timed call; `place` (input to device) and `fetch` (output back
    to CPU logits) stay outside the timed region; `synchronize` is called inside it (CUDA)."""

    run: Callable[[Any], Any]
    device: str = "cpu"
    place: Callable[[torch.Tensor], Any] = _identity
    fetch: Callable[[Any], torch.Tensor] = _identity
    synchronize: Callable[[], None] = _noop
    providers: tuple[str, ...] = ()         # for ONNX Runtime: what session.get_providers() says ran
    model_bytes: int | None = None          # serialized size when the runtime owns its own format
    figures: dict[str, float] = field(default_factory=dict)
    reset_peak_memory: Callable[[], None] | None = None   # device memory accounting (CUDA)
    peak_memory_mb: Callable[[], float] | None = None
    precision: str = "fp32"                 # what the arithmetic runs in: picks the matmul peak it is compared with
    kernel_precision: str = ""              # what the runtime's own profile says its kernels ran in ("bf16 100%")
    threads: int | None = None              # the runtime's own thread pool (ONNX Runtime intra-op); None: torch's
    notes: tuple[str, ...] = ()             # what qualifies this predictor's figures (e.g. an exporter fallback)
    # Optional: profile(placed batch, calls) -> [(module path, operator kind, seconds per call)], where one
    # call's time went (bench.measure.opprofile); None with `profile_unavailable` saying why not.
    profile: Callable[[Any, int], list[tuple[str, str, float]]] | None = None
    profile_unavailable: str = ""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run(self.place(x))
        self.synchronize()
        return self.fetch(out)


# What a module is made of, as a transform produces it and a runtime (or the next transform) accepts
# it. A pipeline whose parts do not fit is refused when it is parsed, before anything runs.
FLOAT = "float"                # ordinary float nn.Modules
TORCH_INT8 = "torch_int8"      # torch.ao quantized modules: CPU kernels only, no ONNX exporter
FORMAT_WORDS = {FLOAT: "float modules", TORCH_INT8: "torch.ao int8 modules"}

EXACT, APPROXIMATE = "exact", "approximate"
# An exact pipeline's logits may differ from eager's by float reassociation only: at most this much,
# relative to the largest eager logit (and never less than this much absolute).
EXACT_TOLERANCE = 1e-3
