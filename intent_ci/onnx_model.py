"""ONNX Runtime for a release merged for serving: ``intent-ci serve --runtime onnx``.

The merged model (encoder with LoRA folded in, pooling, head) is exported with
`torch.onnx.export` once per load, checked against torch on the release's own utterances, and
then stands in for the model's forward pass inside `IntentClassifier`: tokenization, batching,
softmax and the out-of-scope score stay exactly as they are. On all-MiniLM-L6-v2 on CPU at
equal thread counts on a quiet machine, ONNX Runtime ran 1.23x torch's utterances/s on batches
of 64 and 2.3x on single utterances, with max |Δprob| 1.8e-6 (scripts/results/bench_serve.md).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from intent_ci.errors import IntentCIError

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4
"""Largest |Δprob| against torch at which an exported release is served."""
FEATURE_TOLERANCE = 1e-3
"""Largest |Δ| of a pooled feature against torch (an out-of-scope score may read them)."""


class _Positional(torch.nn.Module):
    """The model with positional inputs, as `torch.onnx.export` traces it."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(**dict(zip(self.names, tensors, strict=True)), return_pooled=True)


class OnnxLogits:
    """Stands in for an `IntentModel`'s forward: padded token tensors in, logits (and pooled
    features, which an out-of-scope score may read) out."""

    def __init__(self, session: Any, names: list[str]) -> None:
        self.session = session
        self.names = names

    def _run(self, batch: dict[str, torch.Tensor]) -> list[Any]:
        feed = {name: batch[name].cpu().numpy() for name in self.names}
        return self.session.run(["logits", "pooled"], feed)

    def __call__(
        self, return_pooled: bool = False, **batch: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        logits, pooled = (torch.from_numpy(a) for a in self._run(batch))
        return (logits, pooled) if return_pooled else logits

    def pooled(self, **batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(batch)[1])


def use_onnx_runtime(classifier: Any) -> float:
    """Export `classifier`'s merged model to ONNX and run it with ONNX Runtime from now on.

    The export is checked on the release's replay exemplars (or its intent names when it has
    none): the largest difference of any softmax probability from torch's must be at most
    `TOLERANCE`, and of any pooled feature at most `FEATURE_TOLERANCE`, else the classifier is
    left on torch and an error is raised.

    Args:
        classifier: an `intent_ci.release.IntentClassifier` loaded with ``merge_lora=True``.

    Returns:
        The largest |Δprob| measured.

    Raises:
        IntentCIError: if onnxruntime is not installed, or the export differs from torch.
    """
    try:
        import onnxruntime
    except ImportError:
        raise IntentCIError(
            'runtime onnx needs onnxruntime: pip install "intent-ci[onnx]"'
        ) from None
    texts = [t for utterances in classifier.release.replay.values() for t in utterances][:64]
    texts = texts or [intent.replace("_", " ") for intent in classifier.intents]
    expected = classifier.predict_proba(texts)
    expected_features = classifier.features(texts)
    example = classifier.tokenizer(texts[:2], padding=True, return_tensors="pt")
    names = list(example.keys())
    model = _Positional(classifier.model, names).eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on data-dependent shapes
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            tuple(example[name] for name in names),
            str(path),
            input_names=names,
            output_names=["logits", "pooled"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in names}
            | {"logits": {0: "batch"}, "pooled": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    torch_model = classifier.model
    classifier.model = OnnxLogits(session, names)
    difference = float((classifier.predict_proba(texts) - expected).abs().max())
    feature_difference = float((classifier.features(texts) - expected_features).abs().max())
    if difference > TOLERANCE or feature_difference > FEATURE_TOLERANCE:
        classifier.model = torch_model
        raise IntentCIError(
            f"release {classifier.name}: ONNX Runtime's probabilities differ from torch's by "
            f"{difference:.2e} (at most {TOLERANCE:g}) and its pooled features by "
            f"{feature_difference:.2e} (at most {FEATURE_TOLERANCE:g}); serve it with runtime torch"
        )
    logger.info(
        "release %s runs on ONNX Runtime %s (max |dprob| against torch %.1e on %d utterances)",
        classifier.name,
        onnxruntime.__version__,
        difference,
        len(texts),
    )
    return difference
