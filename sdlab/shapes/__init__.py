"""The bundled tiny text-to-image model: the shapes dataset, its checker and training code."""
