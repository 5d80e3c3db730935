"""The networks, one per module: U-Net, DynUNet, FCN, DeepLabV3, PSPNet, Mask R-CNN."""

from seg_models.nets.backbones import ResNetBackbone, VGGBackbone
from seg_models.nets.deeplabv3 import DeepLabV3
from seg_models.nets.dynunet import PaddedDynUNet
from seg_models.nets.fcn import FCN
from seg_models.nets.maskrcnn import build_maskrcnn
from seg_models.nets.pspnet import PSPNet, PyramidPooling
from seg_models.nets.unet import UNet, unet_output_size

__all__ = [
    "FCN",
    "DeepLabV3",
    "PSPNet",
    "PaddedDynUNet",
    "PyramidPooling",
    "ResNetBackbone",
    "UNet",
    "VGGBackbone",
    "build_maskrcnn",
    "unet_output_size",
]
