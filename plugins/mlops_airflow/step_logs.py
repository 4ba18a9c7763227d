"""Readable step logs: the step's own lines as they are, the ML runtime's stderr at its own severity.

A step's output mixes two voices.  The step's own log lines (Python
``logging``: ``2026-11-27 11:47:49,229 INFO include.mlops.training.train: ...``) and
its JSON result go to the task log at INFO, unchanged.  TensorFlow's C++
runtime writes to the same stderr in absl's format
(``E0000 00:00:1795780069.087334   21460 cuda_platform.cc:52] failed call to cuInit: ...``)
or TensorFlow's older one (``2026-11-27 11:00:00.123456: W tensorflow/...cc:42] ...``);
those lines are logged at their own severity (I -> INFO, W -> WARNING,
E -> ERROR, F -> CRITICAL), so that a CUDA message no longer reads as the
step's progress, and a real runtime error stands out.

On a machine without an NVIDIA GPU a few runtime lines are known to be
harmless (TensorFlow probing for CUDA, an op-attribute version skew in
``tf.data``); they are dropped.  ``MLOPS_STEP_LOGS=all`` shows every line,
dropped ones included, and lowers ``TF_CPP_MIN_LOG_LEVEL`` to 0 unless it is
set explicitly.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

SHOW_ALL_ENV = "MLOPS_STEP_LOGS"
SHOW_ALL_VALUE = "all"

# absl (TF >= 2.16): "E0000 00:00:1795780069.087334   21460 cuda_platform.cc:52] message" (before absl is
# initialised the time field holds epoch seconds, hence \d+)
_ABSL_LINE = re.compile(r"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]\s]+:\d+\] ")
# TensorFlow's own logger (older releases, some kernels): "2026-11-27 11:00:00.123456: W tensorflow/x.cc:42] message"
_TF_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}: (?P<severity>[IWEF]) [^\]\s]+:\d+\] ")
# absl prints this once per process, before its log is initialised.
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"

_SEVERITY_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}

# Runtime lines that say nothing useful on a machine without a GPU (TensorFlow 2.21, CPU).  Matched as
# substrings of lines already recognised as runtime lines, so a step's own log line is never dropped.
HARMLESS_ON_CPU = (
    "failed call to cuInit",
    "Could not find cuda drivers on your machine",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
    "NodeDef mentions attribute use_unbounded_threadpool",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
)


# Runtime lines that are noise on any machine.
ALWAYS_HARMLESS = (_ABSL_PREAMBLE,)


def runtime_severity(line: str) -> int | None:
    """The logging level of a C++ runtime line, or None when ``line`` is not one."""
    if line.startswith(_ABSL_PREAMBLE):
        return logging.INFO
    match = _ABSL_LINE.match(line) or _TF_LINE.match(line)
    return _SEVERITY_LEVELS[match["severity"]] if match else None


def has_nvidia_gpu() -> bool:
    """Whether this machine exposes an NVIDIA GPU (its device nodes), without importing TensorFlow."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def show_everything() -> bool:
    return os.environ.get(SHOW_ALL_ENV, "").strip().lower() == SHOW_ALL_VALUE


@dataclass(frozen=True)
class StepLogRouter:
    """Decides the level of each line of a step's output; None drops the line.

    :param cpu_only: the step runs without a GPU, so the CUDA probing lines are noise.
    :param show_all: keep every line (``MLOPS_STEP_LOGS=all``).
    """

    cpu_only: bool
    show_all: bool = False

    @classmethod
    def for_this_machine(cls) -> StepLogRouter:
        return cls(cpu_only=not has_nvidia_gpu(), show_all=show_everything())

    def level(self, line: str) -> int | None:
        severity = runtime_severity(line)
        if severity is None:
            return logging.INFO
        if self.show_all:
            return severity
        if any(text in line for text in ALWAYS_HARMLESS):
            return None
        if self.cpu_only and any(text in line for text in HARMLESS_ON_CPU):
            return None
        return severity

    def runtime_env(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with TensorFlow's C++ log threshold: errors only by default, everything when asked."""
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if self.show_all else "2")
        return env
