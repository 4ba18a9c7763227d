"""Warm step starts: a runner that has imported TensorFlow and Great Expectations once forks each step.

A step on the ``local`` backend is a new ``python -m include.mlops <step>``
process, and most of its start is importing TensorFlow (about 3.4 s) or Great
Expectations (about 2.5 s).  The step runner (``python -m include.mlops.warm``,
a program of ``make run``'s supervisord) imports those libraries once and then
waits on a Unix socket; for each step it forks a child that runs the step CLI
exactly as the cold process would, with the task's environment, folder,
arguments and output pipe.

- :mod:`~include.mlops.warm.protocol`: the request, its compatibility check
  and the socket's framing, shared by both sides.
- :mod:`~include.mlops.warm.server`: the runner.
- :mod:`~include.mlops.warm.client`: :func:`~include.mlops.warm.client.start_warm`,
  a ``Popen``-like handle the Airflow operator uses in place of a subprocess.

What a warm step keeps from a cold one:

- **Isolation.** Each step is a process of its own; only third-party libraries
  are imported before the fork, never this project's modules, so the step reads
  its code, config and environment as a cold start would (the runner itself
  imports only this package and :mod:`include.mlops`'s empty ``__init__``).
- **Killing.** The child leads its own process group, like the cold step
  (``start_new_session``), so ``execution_timeout`` and "mark failed" end it and
  everything it started with ``killpg``.
- **Exit codes.** The runner reports the child's exit status (a signal as a
  negative number, as ``Popen`` does); a runner that vanishes mid-step is an
  unknown exit, which the task retries.
- **Fallback.** No runner, a runner started under another interpreter or with
  different import-time settings (``TF_*``, ``CUDA_*``, thread counts,
  ``PYTHONHASHSEED``...), or a retry of the task: the step starts cold.
"""
