"""The `profanity` scorer: the offline default, alt-profanity-check's bundled linear classifier."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from astra_core.errors import ComponentBuildError
from astra_core.turns import TextScorer

# scikit-learn warns when unpickling a model saved by another scikit-learn version
# (InconsistentVersionWarning, a UserWarning subclass; older versions raised a plain UserWarning
# with the same text). The bundled model is a simple linear one, so only these are silenced.
_SKLEARN_VERSION_WARNING = r"Trying to unpickle estimator"


class ProfanityScorer(TextScorer):
    """The probability that each text is profane, from alt-profanity-check (works offline).

    The classifier (TF-IDF features and a calibrated linear SVM) ships inside the
    `alt-profanity-check` package, so nothing is downloaded. Each `score` call makes a single
    batched `predict_prob` call, whatever the number of texts.

    >>> scorer = ProfanityScorer()
    >>> [round(s) for s in scorer.score_texts(["have a lovely day", "shut up you fucking idiot"])]
    [0, 1]
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SKLEARN_VERSION_WARNING, category=UserWarning)
            try:
                from profanity_check import predict_prob
            except ImportError as error:
                raise ComponentBuildError(
                    "scorer 'profanity' needs the alt-profanity-check package: pip install alt-profanity-check"
                ) from error
        self._predict_prob: Callable[[list[str]], Any] = predict_prob

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """One profanity probability in [0, 1] per text, in input order."""
        if not texts:  # the classifier rejects an empty batch
            return []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SKLEARN_VERSION_WARNING, category=UserWarning)
            probabilities = self._predict_prob(list(texts))
        return [float(p) for p in probabilities]
