"""Networks.

- `registry.py` — `build_model(cfg.model)` by name, runtime switches
- `unet.py` — the classic DoubleConv/Down/Up/OutConv UNet (the seed)
- `timm_unet.py` — a UNet decoder on a timm encoder
- `smp_unet.py` — segmentation_models_pytorch architectures (`model.name=smp`, optional)
- `layers.py` — shared building blocks (DoubleConv, padding)
- `weights.py` — safetensors weights io, state-dict cleaning
"""
