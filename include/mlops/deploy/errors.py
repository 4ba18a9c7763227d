"""The deploy step's errors: one module, so that the deploy, smoke-check and roll-back modules share them."""

from __future__ import annotations


class DeployError(RuntimeError):
    """Deploying cannot go ahead; the message says why and what to do."""


class DeployVerificationError(DeployError):
    """The model server did not serve the deployed version correctly; the label was moved back."""


class ServedBytesError(DeployError):
    """The version would serve other bytes than the ones its gate measured; nothing was moved (bad input)."""


class InfraValidationError(DeployError):
    """The version did not load, or answered wrongly, in the sandbox: it is never labelled (bad input, exit 3)."""


class SandboxTimeoutError(DeployError):
    """The sandbox did not report the version AVAILABLE in time (the machine may be slow: retried, exit 1)."""
