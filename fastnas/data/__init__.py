"""fastnas.data."""
