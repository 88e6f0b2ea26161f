"""Test and benchmark utilities. Nothing here is imported by the library itself; modules that need
torch import it lazily, so `advjax` never depends on it."""
