"""Where a gate's outcome leads: register, optimize, reject or skip the deploy.

The lifecycle DAG branches on :func:`route`; the routes name its tasks.
"""

from __future__ import annotations

from include.mlops.evaluation.gate.rules import GateError

# The first gate sends a failing candidate to optimize; the gate after optimize rejects it.
GATE_FAIL_ROUTES = ("optimize", "reject")
ROUTES = ("register", "optimize", "reject", "skip_deploy")


def route(passed: bool, *, deploying: bool, on_fail: str) -> str:
    """The task a gate's outcome leads to: ``register``, ``optimize``, ``reject`` or ``skip_deploy``.

    ``passed`` is the decision's outcome (overrides included), ``deploying``
    whether the run may register and move a label (backfills and
    ``skip_deploy`` runs may not), and ``on_fail`` where this gate sends a
    failing candidate (one of :data:`GATE_FAIL_ROUTES`).  A run that may not
    deploy never registers and is not optimized (optimizing serves only a
    deploy); a rejection is still reported, because that is its evaluation.
    """
    if on_fail not in GATE_FAIL_ROUTES:
        raise GateError(f"a gate sends a failing candidate to one of {', '.join(GATE_FAIL_ROUTES)}, not {on_fail!r}")
    if passed:
        return "register" if deploying else "skip_deploy"
    if on_fail == "reject":
        return "reject"
    return "optimize" if deploying else "skip_deploy"


__all__ = ["GATE_FAIL_ROUTES", "ROUTES", "route"]
