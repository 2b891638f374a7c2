"""``implicit_it.analyses``: layerwise weight and logit deltas of each variant, compared with
the rule adapter's delta."""
