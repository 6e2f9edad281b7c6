"""intent-ci: add intents to a deployed intent classifier as cheap, reviewable, reversible releases.

Data flows through one module per stage: :mod:`~intent_ci.data` (utterances in, validated) ->
:mod:`~intent_ci.modeling` (frozen encoder + LoRA + widening head) -> :mod:`~intent_ci.replay`
(exemplar memory) -> :mod:`~intent_ci.preflight` (what the write needs, checked before
training) -> :mod:`~intent_ci.training` (one Accelerate loop, CE + distillation) ->
:mod:`~intent_ci.calibration` (the out-of-scope threshold of each release) ->
:mod:`~intent_ci.evaluation` -> :mod:`~intent_ci.registry` (atomic, immutable releases) ->
:mod:`~intent_ci.release` (files <-> model, `IntentClassifier`) -> :mod:`~intent_ci.pipeline`
(the `init` and `add-intent` jobs) -> :mod:`~intent_ci.gate` (may a release ship? paired
old-intent regression checks, `intent-ci check`) -> :mod:`~intent_ci.cli`.
"""

__version__ = "0.1.0"

from intent_ci.config import (  # noqa: E402
    DataConfig,
    DistillConfig,
    GateConfig,
    ModelConfig,
    OOSConfig,
    RegistryConfig,
    ReleaseConfig,
    ReplayConfig,
    TrainConfig,
    load_config,
)
from intent_ci.errors import (  # noqa: E402
    IntentCIError,
    LatestMovedError,
    ReleaseVerificationError,
)


def __getattr__(name: str):
    # Heavy imports (torch, transformers) only when the API is used, so `intent-ci --help` is fast.
    if name in ("IntentClassifier", "Prediction"):
        from intent_ci import release

        return getattr(release, name)
    if name in ("init_release", "add_intents", "update_release"):
        from intent_ci import pipeline

        return getattr(pipeline, name)
    if name == "evaluate_release":
        from intent_ci.evaluation import evaluate_release

        return evaluate_release
    if name == "read_examples":
        from intent_ci.data import read_examples

        return read_examples
    if name in ("verify_registry", "rollback", "diff_releases", "retire_intents"):
        from intent_ci import lifecycle

        return getattr(lifecycle, name)
    if name == "run_check":
        from intent_ci.check import run_check

        return run_check
    if name == "Registry":
        from intent_ci.registry import Registry

        return Registry
    raise AttributeError(name)


__all__ = [
    "DataConfig",
    "DistillConfig",
    "GateConfig",
    "IntentCIError",
    "IntentClassifier",
    "LatestMovedError",
    "ModelConfig",
    "OOSConfig",
    "Prediction",
    "Registry",
    "RegistryConfig",
    "ReleaseConfig",
    "ReleaseVerificationError",
    "ReplayConfig",
    "TrainConfig",
    "add_intents",
    "diff_releases",
    "evaluate_release",
    "init_release",
    "read_examples",
    "run_check",
    "load_config",
    "retire_intents",
    "rollback",
    "update_release",
    "verify_registry",
]
