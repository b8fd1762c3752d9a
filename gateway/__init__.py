"""abroad-gateway: an identity front door, modelled on DigiD, for people who live abroad."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "create_app"]


def __getattr__(name: str) -> object:
    # `from gateway import create_app` without importing Flask for every submodule import.
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    raise AttributeError(name)
