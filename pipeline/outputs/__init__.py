"""Outputs built from a label store: class polygons and STAC Items."""
