"""`tracer follow`: capture on every hop of the way while a request flies, then correlate."""
