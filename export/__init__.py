"""Ahead of time: export-engines, the manifest, the artifact store."""
