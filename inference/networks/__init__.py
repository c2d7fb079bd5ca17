"""tamsoat's own network definitions, built by name from a MONAI bundle's ``network_def``.

They are part of the service (a bundle naming them runs without ``trusted: true``, see
``inference.runners.bundle_predictor``) and training builds the same classes, so a trained state
dict loads into exactly the network the service runs.
"""

from inference.networks.nodule_net import NoduleNet, build_network

__all__ = ["NoduleNet", "build_network"]
