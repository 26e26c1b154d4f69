"""Discovery: the expected way of a request between two pods, from the live state of pods and nodes."""
