"""The Triton implementations, one module per op, each with the reference's exact signature."""
