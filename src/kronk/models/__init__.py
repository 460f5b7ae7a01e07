"""Model management: home folder, catalog, downloads, the local model index."""
