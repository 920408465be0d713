"""`patchkit train MODEL`: one entry point for every patched model, launched through torchrun."""
