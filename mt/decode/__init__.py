"""Decoding: a trained model and text in, translations out (search, engines, layouts)."""
