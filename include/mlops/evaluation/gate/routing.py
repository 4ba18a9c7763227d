"""Where a gate's outcome leads: register, optimize, reject, skip the deploy, or nothing new to register.

The lifecycle DAG branches on :func:`route`; the routes name its tasks, except ``identical``, which
ends the run in its ``skip_deploy`` task.
"""

from __future__ import annotations

from include.mlops.evaluation.gate.rules import GateError

# The first gate sends a failing candidate to optimize; the gate after optimize rejects it.
GATE_FAIL_ROUTES = ("optimize", "reject")
ROUTES = ("register", "optimize", "reject", "skip_deploy", "identical")


def route(passed: bool, *, deploying: bool, on_fail: str, identical: bool = False) -> str:
    """The route a gate's outcome leads to: ``register``, ``optimize``, ``reject``, ``skip_deploy`` or ``identical``.

    ``passed`` is the decision's outcome (overrides included), ``deploying``
    whether the run may register and move a label (backfills and
    ``skip_deploy`` runs may not), and ``on_fail`` where this gate sends a
    failing candidate (one of :data:`GATE_FAIL_ROUTES`).  A run that may not
    deploy never registers and is not optimized (optimizing serves only a
    deploy); a rejection is still reported, because that is its evaluation.
    ``identical``: the candidate is the champion itself (the same fingerprint),
    so a passing one, forced or not, has nothing new to register.
    """
    if on_fail not in GATE_FAIL_ROUTES:
        raise GateError(f"a gate sends a failing candidate to one of {', '.join(GATE_FAIL_ROUTES)}, not {on_fail!r}")
    if passed:
        if not deploying:
            return "skip_deploy"
        return "identical" if identical else "register"
    if on_fail == "reject":
        return "reject"
    return "optimize" if deploying else "skip_deploy"


__all__ = ["GATE_FAIL_ROUTES", "ROUTES", "route"]
