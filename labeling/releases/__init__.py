"""Releases: immutable, numbered versions of a project's approved labels, their exports and lineage."""
