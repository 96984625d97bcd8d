"""Device profiles and the facts of this machine they are checked against. Stdlib only: apps and CI import it freely."""

from .machine import ISA_FLAGS, cpu_info

__all__ = ["ISA_FLAGS", "cpu_info"]
