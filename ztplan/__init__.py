"""ztplan: declarative ZeroTier exit gateways."""

__version__ = "0.1.0"
