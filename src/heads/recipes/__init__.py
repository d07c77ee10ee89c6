"""Head recipes: each module registers one head (model + losses + data + default TOML)."""
