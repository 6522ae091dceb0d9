"""The training log's metric lines and the regexes SageMaker charts them with, in one place.

SageMaker applies each ``MetricDefinition`` regex to every line the container writes and takes the
first group as the value, so the lines below are a stable interface: the TrainingJob manifests
under k8s/templates carry :data:`METRIC_DEFINITIONS` verbatim (a test checks they agree), and a
test runs a real training and applies those regexes to its log.

Lines (one per ``log_every`` iterations, and once at the end with a val channel)::

    [train] it=50/3000 loss=1.2345 lr=0.02 images/s=12.3 elapsed_s=45 loss_classifier=0.1234 ...
    [val] segm_AP=0.3012 segm_AP50=0.5123 bbox_AP=0.3320 bbox_AP50=0.5544 images=500

This module imports nothing heavy: the deploy tests read it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping

TRAIN_PREFIX = "[train]"
VAL_PREFIX = "[val]"
# A number as the lines print it (fixed, general or exponent notation, maybe negative: COCOeval
# reports -1 for "no ground truth"). No non-capturing groups or look-arounds, so the same regex
# reads the same way in any engine SageMaker may use.
NUMBER = r"([0-9.eE+-]+)"
VAL_KEYS = ("segm_AP", "segm_AP50", "bbox_AP", "bbox_AP50")

# (SageMaker metric name, regex); the first group is the value.
METRICS: tuple[tuple[str, str], ...] = (
    ("train:loss", r"\[train\] it=[0-9]+/[0-9]+ loss=" + NUMBER),
    ("train:lr", r"\[train\].* lr=" + NUMBER),
    ("train:images_per_second", r"\[train\].* images/s=" + NUMBER),
    *((f"val:{key}", r"\[val\].* " + key + "=" + NUMBER) for key in VAL_KEYS),
)


def metric_definitions() -> list[dict[str, str]]:
    """The TrainingJob's ``algorithmSpecification.metricDefinitions`` (same in operator and ACK)."""
    return [{"name": name, "regex": regex} for name, regex in METRICS]


def train_line(
    it: int,
    iterations: int,
    loss: float,
    lr: float,
    images_per_s: float,
    elapsed_s: float,
    parts: Mapping[str, float],
) -> str:
    """One training log line; ``parts`` are torchvision's loss terms (``loss_classifier``, ...)."""
    terms = " ".join(f"{k}={v:.4f}" for k, v in parts.items())
    line = (
        f"{TRAIN_PREFIX} it={it}/{iterations} loss={loss:.4f} lr={lr:.6g} "
        f"images/s={images_per_s:.2f} elapsed_s={elapsed_s:.0f}"
    )
    return f"{line} {terms}" if terms else line


def train_done_line(it: int, elapsed_s: float, images_per_s: float) -> str:
    """The summary at the end of training (deliberately matches none of the train regexes)."""
    rate = f"mean_images/s={images_per_s:.2f}"
    return f"{TRAIN_PREFIX} finished iterations={it} elapsed_s={elapsed_s:.0f} {rate}"


def val_line(metrics: Mapping[str, float], images: int) -> str:
    """The final validation metrics: every key of :data:`VAL_KEYS`, then the rest sorted."""
    keys = [k for k in VAL_KEYS if k in metrics] + sorted(set(metrics) - set(VAL_KEYS))
    return " ".join([VAL_PREFIX, *(f"{k}={metrics[k]:.4f}" for k in keys), f"images={images}"])
