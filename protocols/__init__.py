"""The MPC layer over CrypTen. Importing any submodule installs the torch 2.x shim first."""

from . import crypten_compat as _crypten_compat  # noqa: F401  (must precede every crypten import)
