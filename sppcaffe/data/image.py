"""Images through OpenCV, as Caffe's util/io.cpp reads them: BGR channel
order, uint8, resized with cv::resize's default bilinear interpolation.
Arrays handed to the rest of sppcaffe are CHW (channels first)."""
import os

import numpy as np

from .errors import DataError

# How encoded images are decoded: Caffe's DecodeDatumToCVMat(datum, is_color)
# and DecodeDatumToCVMatNative (flag -1: keep the file's own channels).
# OpenCV's imread flags by name: OpenCV is imported where it is used (~25 ms
# to import and ~60 ms more at exit, which nets of raw datums never need).
DECODE_FLAGS = {"color": "IMREAD_COLOR", "gray": "IMREAD_GRAYSCALE", "native": "IMREAD_UNCHANGED"}


def read_image(path, height=0, width=0, is_color=True):
    """Caffe's ReadImageToCVMat: the image at `path` as an HWC (colour) or
    HW (grey) uint8 array, resized to height x width when both are > 0;
    None when the file cannot be read or decoded (as Caffe, which logs
    and goes on)."""
    import cv2
    flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
    path = os.fspath(path)
    if "\0" in path:
        return None           # no file has such a name; OpenCV would read the name up to the NUL
    try:
        image = cv2.imread(path, flag) if _opencv_takes(path) else _decode_file(path, flag)
    except cv2.error:           # e.g. a corrupt header declaring a huge image
        return None
    if image is None:
        return None
    if height > 0 and width > 0:
        image = cv2.resize(image, (width, height))
    return image


def _opencv_takes(path):
    """Whether cv2.imread can be given `path`: a name that is not UTF-8 on
    disk (a lone surrogate in Python) crashes it."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode_file(path, flag):
    import cv2
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data else None


def decode_image(data, mode="native"):
    """Decode JPEG/PNG/... bytes (`mode` one of DECODE_FLAGS); None if the
    bytes are not an image OpenCV can decode."""
    if not data:
        return None
    import cv2
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), getattr(cv2, DECODE_FLAGS[mode]))
    except cv2.error:           # e.g. a corrupt header declaring a huge image
        return None


def encode_image(image, encoding):
    """cv::imencode(".jpg"/".png", image) as bytes (OpenCV's default quality)."""
    import cv2
    ok, buffer = cv2.imencode("." + encoding, image)
    if not ok:
        raise DataError(f"OpenCV cannot encode an image as '{encoding}'")
    return buffer.tobytes()


def to_chw(image):
    """An OpenCV image (HW or HWC) as a CHW view."""
    return image[np.newaxis] if image.ndim == 2 else image.transpose(2, 0, 1)

