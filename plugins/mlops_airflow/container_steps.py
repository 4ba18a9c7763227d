"""What a lifecycle step runs in a container: the trainer image and the step CLI's argv.

Both container backends (:mod:`mlops_airflow.container_operators`) run CPU
steps in ``$MLOPS_TRAINER_IMAGE`` and GPU steps in ``$MLOPS_TRAINER_GPU_IMAGE``
(the CUDA build of the same image), with the very command the ``local``
backend runs.  Importing this module loads no provider.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from mlops_airflow.steps import step_command

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "mlops-trainer:local"
IMAGE_ENV = "MLOPS_TRAINER_IMAGE"
GPU_IMAGE_ENV = "MLOPS_TRAINER_GPU_IMAGE"


def trainer_image() -> str:
    """The CPU trainer image: ``$MLOPS_TRAINER_IMAGE``, else the locally built ``DEFAULT_IMAGE``."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def step_image(step: str, model: str, gpus: int) -> str:
    """The image a step runs in: the CUDA trainer image for a step that gets GPUs, else the CPU one.

    Without ``$MLOPS_TRAINER_GPU_IMAGE`` a GPU step falls back to the CPU image,
    where TensorFlow finds no CUDA and trains on the CPU; the log says so.
    """
    if not gpus:
        return trainer_image()
    gpu_image = os.environ.get(GPU_IMAGE_ENV)
    if gpu_image:
        return gpu_image
    log.warning(
        "Step %r of model %r asks for %d GPU(s) but %s is not set: it runs in the CPU image %s, which has no "
        "CUDA, so TensorFlow will not use the GPUs. Set %s to the CUDA trainer image.",
        step,
        model,
        gpus,
        GPU_IMAGE_ENV,
        trainer_image(),
        GPU_IMAGE_ENV,
    )
    return trainer_image()


def container_command(step: str, model: str, arguments: Mapping[str, Any]) -> list[str]:
    """The step CLI's argv inside the image: the local backend's, with the image's ``python``."""
    return ["python", *step_command(step, model, arguments)[1:]]
