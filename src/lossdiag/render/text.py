"""How numbers read in every text the project writes (diagnosis, suspects, console)."""

from __future__ import annotations

import math


def pct(x: float) -> str:
    """``0.485`` -> ``"48.5%"``."""
    return f"{100 * x:.1f}%"


def pct_digits(low: float, high: float) -> int:
    """Decimals a percentage with the interval ``[low, high]`` (as fractions) can be quoted to: the last digit
    about a tenth of the half-width (``48% (95% CI 13% to 81%)``, not ``48.5% (...13.4% to 81.0%)``)."""
    half = 100 * (high - low) / 2
    if not math.isfinite(half) or half <= 0:
        return 1
    return max(0, min(3, 1 - math.ceil(math.log10(half))))


def interval_pct(x: float, ci: tuple[float, float]) -> str:
    """``"27% (95% CI 6% to 43%)"``: an estimate and its 95% interval, to the precision the interval allows (a
    bound that would read ``-0%`` gets the digits that show its sign: ``-0.2%``)."""
    d = pct_digits(*ci)

    def bound(v: float) -> str:
        digits = d
        while digits < 3 and v != 0 and float(f"{100 * v:.{digits}f}") == 0:
            digits += 1
        return f"{100 * v:.{digits}f}%"

    return f"{100 * x:.{d}f}% (95% CI {bound(ci[0])} to {bound(ci[1])})"


def loss_text(x: float) -> str:
    """A loss to 4 decimals, or in scientific notation when that would read 0.0000."""
    return f"{x:.4f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def signed(x: float) -> str:
    return f"{x:+.3f}"


def plural(count: int, noun: str) -> str:
    """``"1 sample"``, ``"2 samples"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def accuracy_move(before: float, after: float) -> str:
    """``"was unchanged at 0.922"`` when both read the same at 3 decimals, else ``"went 0.595 -> 0.719"``."""
    if f"{before:.3f}" == f"{after:.3f}":
        return f"was unchanged at {after:.3f}"
    return f"went {before:.3f} -> {after:.3f}"
