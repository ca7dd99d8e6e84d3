"""Experiment specs: one typed YAML file holds everything a run depends on.

A pure schema package: one module per section (data, policy, training, evaluation, grow, reward, improve,
experiment), the loader (strict YAML, branches merged with their parent, errors naming file and field).
Checks that need the installed system (dataset registry, reward plugins) are core/spec_check.py's.
"""

from __future__ import annotations

from rest_pipeline.spec.base import SpecError
from rest_pipeline.spec.data import DataFiles, DataSpec, LinePolicy, TextPair, TokenizerSpec
from rest_pipeline.spec.evaluation import DecodingSpec, EvaluationSpec
from rest_pipeline.spec.experiment import (
    BRANCH_INHERITED,
    AutomationSpec,
    BranchSpec,
    ComputeSpec,
    ExperimentSpec,
    OnlineRLSpec,
)
from rest_pipeline.spec.grow import ComputeType, GrowSpec, SamplingSpec
from rest_pipeline.spec.improve import (
    BVMPOSpec,
    FilterSpec,
    GoldSpec,
    ImproveSpec,
    ImproveTrainSpec,
    InterpolatedFilter,
    LossName,
    OACSpec,
    PercentileFilter,
    ThresholdFilter,
)
from rest_pipeline.spec.loader import SPEC_DIR, all_specs, find_spec, load_spec, spec_dirs
from rest_pipeline.spec.policy import LoraSpec, PolicySpec
from rest_pipeline.spec.reward import HttpRewardSpec, RewardSpec
from rest_pipeline.spec.training import BCSpec

__all__ = [
    "AutomationSpec",
    "BCSpec",
    "BRANCH_INHERITED",
    "BVMPOSpec",
    "BranchSpec",
    "ComputeSpec",
    "ComputeType",
    "DataFiles",
    "DataSpec",
    "DecodingSpec",
    "EvaluationSpec",
    "ExperimentSpec",
    "FilterSpec",
    "GoldSpec",
    "GrowSpec",
    "ImproveSpec",
    "ImproveTrainSpec",
    "InterpolatedFilter",
    "LinePolicy",
    "TextPair",
    "LoraSpec",
    "LossName",
    "OACSpec",
    "OnlineRLSpec",
    "PercentileFilter",
    "PolicySpec",
    "HttpRewardSpec",
    "RewardSpec",
    "SPEC_DIR",
    "SamplingSpec",
    "SpecError",
    "ThresholdFilter",
    "TokenizerSpec",
    "all_specs",
    "find_spec",
    "load_spec",
    "spec_dirs",
]
