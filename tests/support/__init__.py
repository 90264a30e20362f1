"""Test support code (the real-browser JupyterLab driver)."""
