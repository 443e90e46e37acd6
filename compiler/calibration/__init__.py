"""Calibration: change curves measured over sampling runs, and the scale/shift corrections fitted from them."""
