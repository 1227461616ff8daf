"""Class weights for imbalanced data (`--class_weights none|balanced|PATH.json`), shared by both neural arms
(weighted cross-entropy) and the TF-IDF baseline (LogisticRegression's `class_weight`).

`balanced` is scikit-learn's definition: weight_c = n / (k * count_c) over the training split, k being the
number of classes present in it. A JSON file maps label names to weights; labels it omits weigh 1.
"""

import json
import math
from collections import Counter
from pathlib import Path

from ftvs.errors import FtvsError, closest

# a training split is called imbalanced when its largest class has more than this many times the examples
# of its smallest
IMBALANCE_RATIO = 3.0


def check_spec(spec: str) -> None:
    if spec in ("none", "balanced"):
        return
    if not str(spec).lower().endswith(".json"):
        raise FtvsError(
            f"invalid class_weights={spec!r}: use none, balanced or a JSON file {{label_name: weight}}"
        )
    if not Path(spec).is_file():
        raise FtvsError(
            f"class weights file not found: {spec}; check the path or use --class_weights balanced"
        )


def balanced_weights(counts: list[int]) -> list[float]:
    """n / (k * count_c) for the k classes that occur; 1.0 for a class absent from training (never a
    target)."""
    present = [c for c in counts if c > 0]
    n, k = sum(present), len(present)
    return [n / (k * c) if c > 0 else 1.0 for c in counts]


def read_weights_file(path, label_names: list[str]) -> list[float]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FtvsError(f"class weights file {path} is not readable JSON ({e}); fix it") from None
    if not isinstance(data, dict):
        raise FtvsError(f"class weights file {path} must be a JSON object {{label_name: weight}}")
    weights = {name: 1.0 for name in label_names}
    for name, value in data.items():
        if name not in weights:
            raise FtvsError(
                f"class weights file {path} names unknown label {name!r}{closest(str(name), label_names)}; "
                "use the label names of metadata.json"
            )
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
            raise FtvsError(
                f"class weight of {name!r} in {path} must be a finite number > 0, got {value!r}; fix it in "
                "the file"
            )
        weights[name] = float(value)
    return [weights[name] for name in label_names]


def resolve(spec: str, train_labels, label_names: list[str]) -> list[float] | None:
    """The weight of every label id (index = label id), or None for `none`."""
    if spec in (None, "", "none"):
        return None
    if spec == "balanced":
        counts = Counter(int(y) for y in train_labels)
        return balanced_weights([counts.get(i, 0) for i in range(len(label_names))])
    check_spec(spec)
    return read_weights_file(spec, label_names)


def imbalance_ratio(per_class: dict) -> float:
    """Largest over smallest class count of a split (`metadata.json` `splits[...]["per_class"]`)."""
    counts = [int(c) for c in per_class.values() if int(c) > 0]
    return max(counts) / min(counts) if counts else 1.0
