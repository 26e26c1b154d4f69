"""Correlation: the same packet at every capture point, its hops in order, its flow; then the model."""
