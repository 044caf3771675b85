"""The notebook host: Colab's own services (Drive mount, flush, runtime) and the runtime's deadline."""
