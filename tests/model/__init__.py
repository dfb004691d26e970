"""Tests for mt.model."""
