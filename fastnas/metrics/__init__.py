"""fastnas.metrics."""
