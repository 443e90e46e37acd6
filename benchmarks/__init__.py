"""Benchmarks: eager vs compiled vs cached."""
