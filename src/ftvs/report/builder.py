"""Turn a comparison (see `ftvs.comparison`) into report blocks.

Every number in the text is formatted from the comparison dict at build time: there is no prepared
paragraph with numbers in it, and the qualitative words ("significant", "overfits", "faster") are
chosen by explicit rules from the same numbers (thresholds are stated in the report, and defined in
`ftvs.report.context`). The sections, in report order: `sections_overview` (title, key findings, models,
data set), `sections_training` (training and evaluation), `sections_comparison` (comparative analysis,
appendix), `sections_decide` (the Recommendation box under the title, the deployment decision),
`sections_distill` (distilled students beside their teachers), `sections_tuning` (the arms'
hyperparameter searches, when the runs come from a tuned study).
"""

from __future__ import annotations

from ftvs.report.context import Ctx
from ftvs.report.sections_calibration import calibration_blocks
from ftvs.report.sections_comparison import appendix_blocks, comparative_blocks
from ftvs.report.sections_decide import decision_blocks, recommendation_blocks
from ftvs.report.sections_distill import distill_blocks
from ftvs.report.sections_overview import dataset_blocks, model_blocks, title_blocks
from ftvs.report.sections_training import training_blocks
from ftvs.report.sections_tuning import tuning_blocks


def build_blocks(comparison: dict) -> list[dict]:
    x = Ctx(comparison)
    head = title_blocks(x)  # the title and its one-line summary, then the Recommendation box
    blocks = head[:2] + recommendation_blocks(x) + head[2:]
    blocks += (
        model_blocks(x) + dataset_blocks(x) + training_blocks(x) + comparative_blocks(x) + decision_blocks(x)
    )
    blocks += distill_blocks(x) + tuning_blocks(x) + calibration_blocks(x) + appendix_blocks(x)
    return [b for b in blocks if b]


def report_title(comparison: dict) -> str:
    blocks = title_blocks(Ctx(comparison))
    return blocks[0]["text"] if blocks else "ftvs report"
