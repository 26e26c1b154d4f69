"""Use cases: analyze, follow, watch, path. They return model values; they never print."""
