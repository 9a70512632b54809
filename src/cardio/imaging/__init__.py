"""Radiograph imaging in TensorFlow ops and NumPy: decoding and normalisation (`decode`, `files`,
`dicom`), the lung U-Net (`unet`), the crop to the chest cavity (`crop`), saliency maps
(`saliency`), the cardiothoracic ratio (`ctr`) and cropping a folder of files (`crop_folder`).

Written once and called by the Beam crop stage, the trainer's input pipeline and the serving
signature, so training and serving preprocess identically by construction.
May import: `cardio.features` only (and third-party libraries).
"""
import os

# The shipped lung U-Net: its weights file's name (a segmenter directory holds this file), where
# the package keeps it, and its input size.
UNET_WEIGHTS_FILE = "unet_lungs.weights.h5"
SHIPPED_UNET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
UNET_INPUT_SIZE = 256
# The shipped heart U-Net (same input size; trained on the Wingspan heart masks): its weights file
# sits beside the lung U-Net's, and the cardiothoracic ratio (`ctr`) reads both.
HEART_UNET_WEIGHTS_FILE = "unet_heart.weights.h5"
