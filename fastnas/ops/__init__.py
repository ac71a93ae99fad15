"""fastnas.ops."""
