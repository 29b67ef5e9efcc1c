"""pycaffe's caffe.io image functions (python/caffe/io.py), with its numbers:
images are float32 HxWxK arrays in [0, 1], RGB, as scikit-image gives them
(where Caffe's own C++ side and sppcaffe.data use OpenCV's BGR uint8).

Files are decoded by the project's one image reader (OpenCV, see
sppcaffe/data/image.py) keeping the file's own depth and channels, then
turned into what pycaffe's ``skimage.io.imread`` path returns: RGB order,
``img_as_float`` scaling (uint8 / 255, uint16 / 65535) and scikit-image's
grey conversion.  Lossless formats give pycaffe's values exactly; JPEG
decoders may differ in the last bit on some builds.
"""
import os

import numpy as np

# OpenCV, scikit-image and SciPy are imported by the functions that use
# them: `import sppcaffe` loads this module, and scipy.ndimage alone takes
# a quarter of a second to import.


def _read_rgb(filename):
    """The file's pixels as decoded (native depth), HxW or HxWxC in RGB(A)."""
    import cv2
    from ..data.image import decode_image     # sppcaffe.data imports sppcaffe.io
    path = os.fspath(filename)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise FileNotFoundError(f"cannot read image '{path}': {err.strerror}") from None
    image = decode_image(raw, "native")
    if image is None:
        raise ValueError(f"'{path}' is not an image OpenCV can decode")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def load_image(filename, color=True):
    """An image file as a float32 array in [0, 1]: (H, W, 3) RGB when `color`
    (grey images repeated over 3 channels, alpha dropped), else (H, W, 1)
    intensity (colour images converted as scikit-image's rgb2gray)."""
    import skimage
    import skimage.color
    image = _read_rgb(filename)
    if not color and image.ndim == 3:
        if image.shape[2] == 4:
            image = skimage.color.rgba2rgb(image)
        image = skimage.color.rgb2gray(image)
    image = skimage.img_as_float(image).astype(np.float32)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
        if color:
            image = np.tile(image, (1, 1, 3))
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return image


def resize_image(im, new_dims, interp_order=1):
    """`im` (H, W, K) resized to new_dims = (height, width), keeping K;
    `interp_order` is the spline order (1: bilinear, 0: nearest).  Returns
    float32."""
    import skimage.transform
    from scipy.ndimage import zoom
    im = np.asarray(im)
    new_dims = tuple(int(d) for d in new_dims)
    if im.shape[-1] in (1, 3):
        im_min, im_max = im.min(), im.max()
        if im_max <= im_min:
            # A constant image: nothing to interpolate (and no range to divide by).
            return np.full((new_dims[0], new_dims[1], im.shape[-1]), im_min, dtype=np.float32)
        # scikit-image resizes 1- and 3-channel images in [0, 1]: rescale around it.
        standard = (im - im_min) / (im_max - im_min)
        resized = skimage.transform.resize(standard, new_dims, order=interp_order, mode="constant")
        resized = resized * (im_max - im_min) + im_min
    else:
        # Other channel counts: scipy's spline zoom, slower but general.
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized = zoom(im, scale + (1,), order=interp_order)
    return resized.astype(np.float32)


def oversample(images, crop_dims):
    """The 10 crops of each (H, W, K) image (all of the same size): the four
    corners and the centre, then the same five mirrored left-right.
    Returns float32 (10 * N, crop_h, crop_w, K)."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    centre = im_shape[:2] / 2.0
    corners = [(i, j, i + crop_dims[0], j + crop_dims[1])
               for i in (0, im_shape[0] - crop_dims[0])
               for j in (0, im_shape[1] - crop_dims[1])]
    # The centre crop starts at centre - crop / 2, truncated toward zero as pycaffe's.
    middle = np.concatenate([centre - crop_dims / 2.0, centre + crop_dims / 2.0]).astype(int)
    boxes = np.array(corners + [tuple(middle)], dtype=int)
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]),
                     dtype=np.float32)
    ix = 0
    for im in images:
        for y0, x0, y1, x1 in boxes:
            crops[ix] = im[y0:y1, x0:x1, :]
            crops[ix + 5] = crops[ix, :, ::-1, :]
            ix += 1
        ix += 5
    return crops
