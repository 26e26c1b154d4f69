"""Use cases: analyze, follow, watch, path (and lab). They return values (model values, or the
run's own result that the model is made from) or hand them to the caller's view; they never print."""
