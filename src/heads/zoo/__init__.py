"""Built-in heads, one package each; every package here is imported and registers itself."""
