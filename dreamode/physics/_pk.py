"""The one-compartment model with first-order oral absorption.

Units follow R's ``Theoph`` and ``nlme::SSfol``: the dose is in mg per kg of body weight, so the
clearance ``Cl`` is in L/h/kg and the volume ``V = Cl / ke`` in L/kg; times in hours,
concentrations in mg/L. (Multiply ``Cl`` and ``V`` by the weight for whole-body values.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._constraints import PositiveParameters


class OneCompartmentOral(nn.Module):
    """First-order absorption into one compartment with first-order elimination.

    State ``x = (A, C)`` ``(B, 2)``: ``A`` the drug still to be absorbed per kg of body weight
    (mg/kg), ``C`` the plasma concentration (mg/L)::

        dA/dt = -ka A
        dC/dt = ka A / V - ke C,      V = Cl / ke

    From ``A(0) = dose``, ``C(0) = 0`` the solution is the closed form of `concentration`.
    ``ka``, ``ke`` and ``Cl`` are positive (`PositiveParameters`, log-parametrised by default);
    each may be a number or a tensor ``(B,)`` (one per subject of a batch).

    With ``dose`` given, the linear gut equation is solved in closed form, ``A(t) = dose e^{-ka
    t}`` (dose at ``t = 0``), and the state is ``x = (C,)`` ``(B, 1)`` alone: ``dC/dt = ka A(t) / V
    - ke C``. Same solution, but a fast absorption (theophylline has ka up to 9/h) no longer limits
    an explicit solver's step for the whole day: only ``ke`` and whatever is added to ``dC/dt``
    do. The field then reads ``t`` (a scalar, or per sample ``(B,)``).

    Args:
        ka: absorption rate constant (1/h).
        ke: elimination rate constant (1/h).
        cl: clearance per kg (L/h/kg).
        dose: ``None`` (the gut is a state) or the dose per sample (mg/kg), a number or ``(B,)``.
    """

    def __init__(
        self,
        ka: float | Tensor,
        ke: float | Tensor,
        cl: float | Tensor,
        *,
        dose: float | Tensor | None = None,
        transform: str = "log",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.params = PositiveParameters(
            {"ka": ka, "ke": ke, "cl": cl}, transform=transform, dtype=dtype, device=device
        )
        dtype = self.params.raw["ka"].dtype
        self.register_buffer("dose", None if dose is None else torch.as_tensor(dose, dtype=dtype, device=device))

    @property
    def state_dim(self) -> int:
        """2 for ``(A, C)``, 1 for ``(C,)`` when the dose is given."""
        return 2 if self.dose is None else 1

    @property
    def ka(self) -> Tensor:
        """Absorption rate constant ka > 0 (1/h)."""
        return self.params.ka

    @property
    def ke(self) -> Tensor:
        """Elimination rate constant ke > 0 (1/h)."""
        return self.params.ke

    @property
    def cl(self) -> Tensor:
        """Clearance Cl > 0 (L/h/kg)."""
        return self.params.cl

    @property
    def volume(self) -> Tensor:
        """Volume of distribution V = Cl / ke (L/kg)."""
        return self.params.cl / self.params.ke

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        ka, ke = self.params.ka, self.params.ke
        if self.dose is None:
            a, c = x[..., 0], x[..., 1]
            return torch.stack([-ka * a, ka * a * ke / self.params.cl - ke * c], dim=-1)
        a = self.dose * torch.exp(-ka * t)
        return (ka * a * ke / self.params.cl - ke * x[..., 0]).unsqueeze(-1)

    def initial_state(self, dose: Tensor | None = None) -> Tensor:
        """The state at the dose time: ``(dose, 0)`` ``(B, 2)``, or ``(0,)`` ``(B, 1)`` when the dose is given.

        Args:
            dose: ``(B,)`` mg/kg; only without the ``dose`` of the constructor.
        """
        if self.dose is None:
            if dose is None:
                raise ValueError("OneCompartmentOral.initial_state: expected the dose (B,) (the gut is a state)")
            dose = torch.as_tensor(dose, dtype=self.params.raw["ka"].dtype)
            return torch.stack([dose, torch.zeros_like(dose)], dim=-1)
        if dose is not None:
            raise ValueError("OneCompartmentOral.initial_state: the dose was given to the constructor; pass none here")
        return torch.zeros(self.dose.reshape(-1).shape[0], 1, dtype=self.dose.dtype, device=self.dose.device)

    def concentration(self, t: Tensor, dose: Tensor | None = None) -> Tensor:
        """The closed form ``C(t)`` for the current parameters (``t`` ``(T, B)`` against ``(B,)`` parameters)."""
        dose = self.dose if dose is None else dose
        return oral_concentration(t, dose, self.ka, self.ke, self.cl)


def oral_concentration(t: Tensor, dose: Tensor | float, ka: Tensor, ke: Tensor, cl: Tensor) -> Tensor:
    """``C(t) = dose · ka · ke / (Cl (ka − ke)) · (e^{−ke t} − e^{−ka t})`` (``nlme::SSfol``).

    Valid for ``ka ≠ ke`` (at ``ka = ke`` the limit is ``dose · ke² t e^{−ke t} / Cl``). Note the
    symmetry: swapping ``ka`` and ``ke`` (with ``Cl`` scaled by ``ka/ke``) gives the same curve
    ("flip-flop"), so a fit needs a start with the intended order, usually ``ka > ke``.
    """
    return dose * ka * ke / (cl * (ka - ke)) * (torch.exp(-ke * t) - torch.exp(-ka * t))


__all__ = ["OneCompartmentOral", "oral_concentration"]
