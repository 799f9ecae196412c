"""Tuning a model's kernels into a resumable database (:mod:`.session`): MetaSchedule's search
made resumable (:mod:`.search`), the first candidates it starts from (:mod:`.first_candidates`),
what runs in its worker processes (:mod:`.workers`) and the runners for boards
(:mod:`.runners`)."""

from tvm_intq.schedules.tune.session import StopToken, TaskResult, summary, tune

__all__ = ["StopToken", "TaskResult", "summary", "tune"]
