"""Model-management tools that sit below the SDK: downloads, assembly, catalogs."""
