"""Kernel schedules, tuning and tuning databases (TIR / MetaSchedule)."""

from .pipeline import build_pipeline, tuning_pipeline

__all__ = ["build_pipeline", "tuning_pipeline"]
