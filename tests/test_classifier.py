"""sppcaffe.Classifier and sppcaffe.Detector (pycaffe's caffe.Classifier /
caffe.Detector) on a tiny generated net, checked against the same net fed
by hand; and a script written for pycaffe (the classification notebook's
cells) run with only its `import caffe` changed."""
import os
import runpy

import cv2
import numpy as np
import pytest

import sppcaffe
from sppcaffe import layers as L
from sppcaffe.detection.proposals import selective_search
from sppcaffe.detector import proposal_windows

MEAN_BGR = np.array([100.0, 110.0, 120.0])
CLASSES = 5


def write_tiny_net(directory, size=8, batch=2):
    """A deploy prototxt (Input `data` batch x 3 x size x size -> conv ->
    ReLU -> fc -> Softmax `prob`) and weights for it; returns both paths."""
    n = sppcaffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, 3, size, size]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3,
                           weight_filler=dict(type="gaussian", std=0.01),
                           bias_filler=dict(type="constant", value=0.1))
    n.relu = L.ReLU(n.conv, in_place=True)
    n.fc = L.InnerProduct(n.relu, num_output=CLASSES, weight_filler=dict(type="gaussian", std=0.01))
    n.prob = L.Softmax(n.fc)
    model = os.path.join(directory, "deploy.prototxt")
    with open(model, "w") as f:
        f.write(str(n.to_proto()))
    sppcaffe.set_random_seed(7)
    weights = os.path.join(directory, "tiny.caffemodel")
    sppcaffe.Net(model, sppcaffe.TEST).save(weights)
    return model, weights


def write_image(path, height, width, seed=0):
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    cv2.imwrite(os.fspath(path), image)
    return image


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_net(tmp_path)


def reference_scores(net, crops):
    """The net's `prob` for H x W x 3 RGB crops in [0, 1], preprocessed by
    hand: BGR, x 255, minus the BGR mean, channels first."""
    batch = np.stack([c[:, :, ::-1].transpose(2, 0, 1) * 255.0 - MEAN_BGR[:, None, None]
                      for c in crops]).astype(np.float32)
    return net.forward(data=batch)["prob"].copy()


def test_classifier_oversample_and_centre(tiny, tmp_path):
    model, weights = tiny
    classifier = sppcaffe.Classifier(model, weights, image_dims=(12, 10), mean=MEAN_BGR,
                                     raw_scale=255, channel_swap=(2, 1, 0))
    assert isinstance(classifier, sppcaffe.Net)
    assert list(classifier.crop_dims) == [8, 8]
    images = [np.random.default_rng(s).random((12, 10, 3)).astype(np.float32) for s in (1, 2, 3)]
    scores = classifier.predict(images)
    assert scores.shape == (3, CLASSES)

    plain = sppcaffe.Net(model, sppcaffe.TEST, weights=weights)
    for image, got in zip(images, scores):
        # The image is already 12 x 10: resizing keeps it (to float rounding).
        corners = [(0, 0), (0, 2), (4, 0), (4, 2), (2, 1)]
        crops = [image[y:y + 8, x:x + 8] for y, x in corners]
        crops += [c[:, ::-1] for c in crops]
        np.testing.assert_allclose(got, reference_scores(plain, crops).mean(0), rtol=1e-4)

    centre = classifier.predict(images, oversample=False)
    np.testing.assert_allclose(centre, reference_scores(plain, [im[2:10, 1:9] for im in images]),
                               rtol=1e-4)
    assert not np.allclose(centre, scores)


def test_classifier_resizes_to_image_dims(tiny):
    model, weights = tiny
    classifier = sppcaffe.Classifier(model, weights, mean=MEAN_BGR, raw_scale=255,
                                     channel_swap=(2, 1, 0))
    assert list(classifier.image_dims) == [8, 8]           # default: the net's input size
    image = np.random.default_rng(4).random((20, 14, 3)).astype(np.float32)
    plain = sppcaffe.Net(model, sppcaffe.TEST, weights=weights)
    expected = reference_scores(plain, [sppcaffe.io.resize_image(image, (8, 8))])
    np.testing.assert_allclose(classifier.predict([image], oversample=False), expected, rtol=1e-4)


def test_classifier_needs_an_input_blob(tmp_path):
    n = sppcaffe.NetSpec()
    n.data = L.DummyData(shape=dict(dim=[1, 3, 4, 4]))
    n.out = L.InnerProduct(n.data, num_output=2)
    model = tmp_path / "no_input.prototxt"
    model.write_text(str(n.to_proto()))
    with pytest.raises(ValueError, match="has no Input blob"):
        sppcaffe.Classifier(str(model), None)


def test_detector_windows(tiny, tmp_path):
    model, weights = tiny
    pixels = write_image(tmp_path / "scene.png", 30, 24)
    detector = sppcaffe.Detector(model, weights, mean=MEAN_BGR, raw_scale=255,
                                 channel_swap=(2, 1, 0))
    windows = np.array([[0, 0, 8, 8], [10, 4, 18, 12], [20, 14, 28, 22]])
    detections = detector.detect_windows([(str(tmp_path / "scene.png"), windows)])
    assert [d["filename"] for d in detections] == [str(tmp_path / "scene.png")] * 3
    np.testing.assert_array_equal(np.array([d["window"] for d in detections]), windows)
    image = pixels[:, :, ::-1] / 255.0                     # RGB in [0, 1]
    plain = sppcaffe.Net(model, sppcaffe.TEST, weights=weights)
    expected = reference_scores(plain, [image[y0:y1, x0:x1] for y0, x0, y1, x1 in windows])
    np.testing.assert_allclose(np.array([d["prediction"] for d in detections]), expected,
                               rtol=1e-4)


def test_detector_context_pad_fills_with_mean(tiny):
    model, weights = tiny
    detector = sppcaffe.Detector(model, weights, mean=MEAN_BGR, raw_scale=255,
                                 channel_swap=(2, 1, 0), context_pad=2)
    # The crop mean is in image space: RGB order, [0, 1].
    np.testing.assert_allclose(detector.crop_mean.ravel(), MEAN_BGR[::-1] / 255.0)
    image = np.ones((8, 8, 3), np.float32)
    # The whole image as the window, pycaffe's geometry: the box doubled
    # around its centre (8 / (8 - 2 * 2)) is (-4, -4, 12, 12), 17 pixels
    # mapped onto 8; the image starts round(4 * 8 / 17) = 2 pixels in and
    # takes round(9 * 8 / 17) = 4; the rest is the mean.
    crop = detector.crop(image, np.array([0, 0, 7, 7]))
    assert crop.shape == (8, 8, 3)
    inside = np.zeros((8, 8), bool)
    inside[2:6, 2:6] = True
    np.testing.assert_allclose(crop[inside], 1.0)
    np.testing.assert_allclose(crop[~inside], np.broadcast_to(MEAN_BGR[::-1] / 255.0, (48, 3)),
                               rtol=1e-6)


def test_detector_selective_search(tiny, tmp_path):
    model, weights = tiny
    canvas = np.full((60, 80, 3), 200, np.uint8)
    canvas[10:40, 15:45] = (20, 40, 220)
    canvas[30:55, 50:75] = (200, 30, 30)
    cv2.imwrite(str(tmp_path / "shapes.png"), canvas)
    detector = sppcaffe.Detector(model, weights, mean=MEAN_BGR, raw_scale=255,
                                 channel_swap=(2, 1, 0))
    detections = detector.detect_selective_search([str(tmp_path / "shapes.png")])
    expected = proposal_windows(selective_search(canvas))
    assert len(detections) == len(expected) > 0
    np.testing.assert_array_equal(np.array([d["window"] for d in detections]), expected)
    for d in detections:
        ymin, xmin, ymax, xmax = d["window"]
        assert 0 <= ymin < ymax <= 60 and 0 <= xmin < xmax <= 80
        assert d["prediction"].shape == (CLASSES,)


def test_proposal_windows_convention():
    # 1-based inclusive x1 y1 x2 y2 -> 0-based ymin xmin, exclusive ymax xmax
    np.testing.assert_array_equal(proposal_windows([[1, 2, 10, 20]]), [[1, 0, 20, 10]])


# The classification notebook (examples/00-classification.ipynb), its cells
# in Python 3, with a tiny net in place of CaffeNet.
PYCAFFE_NOTEBOOK = """
import numpy as np
import matplotlib.pyplot as plt
import sys
caffe_root = CAFFE_ROOT
sys.path.insert(0, caffe_root + 'python')
import caffe

caffe.set_mode_cpu()

model_def = caffe_root + 'models/tiny/deploy.prototxt'
model_weights = caffe_root + 'models/tiny/tiny.caffemodel'

net = caffe.Net(model_def,      # defines the structure of the model
                model_weights,  # contains the trained weights
                caffe.TEST)     # use test mode (e.g., don't perform dropout)

# load the mean image (as distributed with Caffe) for subtraction
mu = np.load(caffe_root + 'python/caffe/imagenet/ilsvrc_2012_mean.npy')
mu = mu.mean(1).mean(1)  # average over pixels to obtain the mean (BGR) pixel values
print('mean-subtracted values:', list(zip('BGR', mu)))

# create transformer for the input called 'data'
transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})

transformer.set_transpose('data', (2,0,1))  # move image channels to outermost dimension
transformer.set_mean('data', mu)            # subtract the dataset-mean value in each channel
transformer.set_raw_scale('data', 255)      # rescale from [0, 1] to [0, 255]
transformer.set_channel_swap('data', (2,1,0))  # swap channels from RGB to BGR

# set the size of the input (we can skip this if we're happy with the default)
net.blobs['data'].reshape(50,        # batch size
                          3,         # 3-channel (BGR) images
                          16, 16)    # image size

image = caffe.io.load_image(caffe_root + 'examples/images/cat.png')
transformed_image = transformer.preprocess('data', image)
plt.imshow(image)

# copy the image data into the memory allocated for the net
net.blobs['data'].data[...] = transformed_image

### perform classification
output = net.forward()

output_prob = output['prob'][0]  # the output probability vector for the first image in the batch

print('predicted class is:', output_prob.argmax())

# load ImageNet labels
labels_file = caffe_root + 'data/ilsvrc12/synset_words.txt'
labels = np.loadtxt(labels_file, str, delimiter='\\t')

print('output label:', labels[output_prob.argmax()])

# sort top five predictions from softmax output
top_inds = output_prob.argsort()[::-1][:5]  # reverse sort and take five largest items

print('probabilities and labels:')
print(list(zip(output_prob[top_inds], labels[top_inds])))

# for each layer, show the output shape
for layer_name, blob in net.blobs.items():
    print(layer_name + '\\t' + str(blob.data.shape))

for layer_name, param in net.params.items():
    print(layer_name + '\\t' + str(param[0].data.shape), str(param[1].data.shape))
"""


def test_pycaffe_notebook_script(tmp_path, capsys):
    root = tmp_path / "caffe"
    (root / "models" / "tiny").mkdir(parents=True)
    model, weights = write_tiny_net(str(root / "models" / "tiny"), size=16, batch=10)
    (root / "python" / "caffe" / "imagenet").mkdir(parents=True)
    pixel_mean = MEAN_BGR[:, None, None] + np.random.default_rng(5).random((3, 16, 16))
    np.save(root / "python" / "caffe" / "imagenet" / "ilsvrc_2012_mean.npy", pixel_mean)
    (root / "examples" / "images").mkdir(parents=True)
    pixels = write_image(root / "examples" / "images" / "cat.png", 16, 16, seed=9)
    (root / "data" / "ilsvrc12").mkdir(parents=True)
    names = ["n0000000%d class %d, other name" % (i, i) for i in range(CLASSES)]
    (root / "data" / "ilsvrc12" / "synset_words.txt").write_text("\n".join(names) + "\n")

    script = PYCAFFE_NOTEBOOK.replace("import caffe\n", "import sppcaffe as caffe\n")
    assert script.count("sppcaffe") == 1          # the one line changed
    path = tmp_path / "notebook.py"
    path.write_text(script.replace("CAFFE_ROOT", repr(str(root) + os.sep)))
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out

    # The same net fed by hand (OpenCV's BGR pixels minus the mean pixel).
    net = sppcaffe.Net(model, sppcaffe.TEST, weights=weights)
    batch = (pixels.transpose(2, 0, 1) - pixel_mean.mean(axis=(1, 2))[:, None, None])
    prob = net.forward(data=batch[None].astype(np.float32))["prob"][0]
    top = prob.argsort()[::-1][:5]
    assert f"predicted class is: {prob.argmax()}\n" in out
    assert f"output label: {names[prob.argmax()]}\n" in out
    printed = out.split("probabilities and labels:\n")[1].splitlines()[0]
    for index in top:
        assert f"'{names[index]}'" in printed
    assert printed.index(f"'{names[top[0]]}'") < printed.index(f"'{names[top[1]]}'")
    assert "data\t(50, 3, 16, 16)" in out and "prob\t(50, 5)" in out
    assert "conv\t(4, 3, 3, 3) (4,)" in out and "fc\t(5, 784) (5,)" in out
