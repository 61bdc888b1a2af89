"""Tests of toolkit.cache."""
