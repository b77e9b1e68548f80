"""Networks: the registry (`registry.build_model`), the classic UNet, the timm-encoder UNet, weights io."""
