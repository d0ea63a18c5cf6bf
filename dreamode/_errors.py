"""Shared error wording (re-uses the solvers package's helper so both packages read alike)."""

from solvers._errors import unknown_name_message

__all__ = ["unknown_name_message"]
