"""The version, on the ground floor: everything that records it (run results, model folders) reads it here."""
__version__ = "0.13.3"
