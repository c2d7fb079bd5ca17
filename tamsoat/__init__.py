"""tamsoat: on-premise AI screening service (composition root and shared kernel)."""

__version__ = "0.1.0"
