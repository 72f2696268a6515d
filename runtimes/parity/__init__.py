"""Parity, the last stage: does an artifact compute what its reference computes?

`reference.py` builds the reference as the artifact computes and its noise floor; `metrics.py` measures
(logit distance, KL, top-k, greedy divergence); `prompts.py` chooses what to run; `harness.py` runs the
artifact and the reference side by side and holds them to `thresholds.json`; `report.py` writes the verdict.
"""

from .harness import GREEDY_TOKENS, THRESHOLDS, artifact_max_seq_len, assert_parity, load_thresholds, run_parity
from .metrics import first_divergence, floor_tolerance, logit_metrics, top1_agreement
from .prompts import colour_bar_card, default_prompts, describe_images, image_prompt_for, prompts_from_file
from .reference import (NUDGE, greedy_agreement, noise_floor, nudged, reference_for, reference_logits, reference_path,
                        runner_logits)
from .report import MIN_LOSS_POSITIONS, ParityReport, PromptResult, write_report

__all__ = [
    "GREEDY_TOKENS", "THRESHOLDS", "artifact_max_seq_len", "assert_parity", "load_thresholds", "run_parity",
    "first_divergence", "floor_tolerance", "logit_metrics", "top1_agreement", "colour_bar_card", "default_prompts",
    "describe_images", "image_prompt_for", "prompts_from_file", "NUDGE", "greedy_agreement", "noise_floor", "nudged",
    "reference_for", "reference_logits", "reference_path", "runner_logits", "MIN_LOSS_POSITIONS", "ParityReport",
    "PromptResult", "write_report",
]
