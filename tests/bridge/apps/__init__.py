"""Sync web apps the recipe tests serve with real servers (Flask, Django) and a plain script."""
