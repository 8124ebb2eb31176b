"""Plain-PyTorch building blocks of the Sphere Encoder's two ViTs (paper spec section 2)."""
