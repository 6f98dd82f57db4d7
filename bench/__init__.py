"""Load generator and benchmark scenarios for chatplane."""
