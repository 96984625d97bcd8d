"""Device profiles (TOML files a user reads and edits) and the facts of this machine they are checked against.

Torch-free: CI machines and devices import it with the runtime alone.
"""

from .fit import mismatches, require_fit
from .loader import candidate_recipes, load_profile, parse_shape, shipped
from .machine import ISA_FLAGS, cpu_info, machine_facts, usable_cores
from .schema import METRICS, Budget, Profile

__all__ = [
    "ISA_FLAGS",
    "METRICS",
    "Budget",
    "Profile",
    "candidate_recipes",
    "cpu_info",
    "load_profile",
    "machine_facts",
    "mismatches",
    "parse_shape",
    "require_fit",
    "shipped",
    "usable_cores",
]
