"""Plain-PyTorch building blocks of the Sphere Encoder's two ViTs (method §2)."""
