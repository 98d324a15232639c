"""Tests of the sync-to-async bridge: loopsafe.run_async, its loops, and sync web servers."""
