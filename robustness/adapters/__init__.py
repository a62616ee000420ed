"""Adapters: check an implementation whose interface differs from the contract's.

* :func:`adapt_loss` wraps a loss class with other constructor keywords, method and output
  names, argument orders and padding conventions (:func:`nan_diagonal`, :func:`pad_ids`).
* ``robustness.adapters.torchmetrics`` is a metrics target built from torchmetrics' classes
  (``--metrics robustness.adapters.torchmetrics``; needs ``pip install
  'aam-robustness[torchmetrics]'``).

See docs/adopting.md for a worked example.
"""

from __future__ import annotations

from robustness.adapters._loss import Converter, adapt_loss, nan_diagonal, pad_ids

__all__ = ["Converter", "adapt_loss", "nan_diagonal", "pad_ids"]
