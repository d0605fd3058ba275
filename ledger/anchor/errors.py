"""The two ways anchoring fails: the chain cannot be used, or the contract said no."""

from __future__ import annotations


class ChainError(Exception):
    """The chain, the node, the contract or the signing key cannot be used as configured.

    Also raised when an anchor's outcome is unknown (no receipt before the deadline) and when a
    recorded anchor does not match the chain. The message says which, and why.
    """


class WrongChain(ChainError):
    """The node answers, but it is not the configured chain, or the contract is not there.

    Unlike a node that is down (anchoring waits and retries), this is a configuration error.
    """


class AnchorRejected(ChainError):
    """The contract reverted an anchor transaction.

    ``reason`` is the custom error's name (``NotOwner``, ``NotIncreasing``, ``DuplicateRoot``),
    ``"OutOfGas"``, or ``"unknown"`` when the revert could not be decoded; ``error_args`` holds its decoded arguments
    and ``tx_hash`` the mined, reverted transaction (None if the node refused it before mining).
    """

    def __init__(
        self,
        reason: str,
        error_args: tuple[object, ...] = (),
        *,
        tx_hash: str | None = None,
        detail: str | None = None,
    ) -> None:
        message = f"the contract rejected the anchor: {reason}"
        if error_args:
            message += "(" + ", ".join(str(a) for a in error_args) + ")"
        if detail:
            message += f" ({detail})"
        if tx_hash:
            message += f" in transaction {tx_hash}"
        super().__init__(message)
        self.reason = reason
        self.error_args = error_args
        self.tx_hash = tx_hash
