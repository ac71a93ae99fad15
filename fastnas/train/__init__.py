"""fastnas.train."""
