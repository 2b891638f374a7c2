"""``implicit_it.reports``: mechanism reports assembled from run directories and their manifests."""
