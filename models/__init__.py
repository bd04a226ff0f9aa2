"""The shipped model bundles, one folder each (see ``scenecam_edge.registry``)."""
