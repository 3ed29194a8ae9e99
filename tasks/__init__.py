"""Task plugins: every module here is imported by the registry and registers itself."""
