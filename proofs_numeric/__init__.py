"""Numerical checks of the papers' theoretical claims, one module per claim.

Each claim module defines `NAME`, `STATEMENT` (the claim with its assumptions) and
`run(*, quick: bool) -> ClaimResult`; `python -m proofs_numeric` runs them, prints a table
(claim, verdict, measured, bound), writes JSON and a figure per claim, and exits non-zero when a
claim fails. Every verdict comes from a pass criterion that could fail.
"""

from proofs_numeric.claim import ClaimResult

__all__ = ["ClaimResult"]
