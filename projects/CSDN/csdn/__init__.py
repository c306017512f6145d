"""CSDN project package (registered into fast-reid's registries on import)."""
