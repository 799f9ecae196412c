"""Kernel schedules, tuning and tuning databases (TIR / MetaSchedule)."""

from tvm_intq.schedules.pipeline import build_pipeline, tir_pipeline, tuning_pipeline

__all__ = ["build_pipeline", "tir_pipeline", "tuning_pipeline"]
