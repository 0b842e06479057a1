"""Networks and differentiable image operations. No I/O, no Ray."""
from m3d_condense.models import convnet, densenet, resnet  # noqa: F401  (register the architectures)
from m3d_condense.models.augment import NUM_UNIFORMS, AugmentSpec, augment
from m3d_condense.models.imagenet_augment import imagenet_augment
from m3d_condense.models.multiformation import decode, decode_rows, mix_init
from m3d_condense.models.registry import create_model, list_models, register_model

__all__ = ["AugmentSpec", "NUM_UNIFORMS", "augment", "create_model", "decode", "decode_rows", "imagenet_augment", "list_models",
           "mix_init", "register_model"]
