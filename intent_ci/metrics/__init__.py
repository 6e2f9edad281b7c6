"""Metrics shipped as local `evaluate` modules (loadable offline with ``evaluate.load(path)``)."""

from pathlib import Path

INTENT_ACCURACY = str(Path(__file__).parent / "intent_accuracy" / "intent_accuracy.py")
INTENT_REGRESSION = str(Path(__file__).parent / "intent_regression" / "intent_regression.py")
OOS_DETECTION = str(Path(__file__).parent / "oos_detection" / "oos_detection.py")
