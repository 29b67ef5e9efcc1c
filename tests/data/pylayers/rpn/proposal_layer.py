"""Stand-in for py-faster-rcnn's rpn.proposal_layer.ProposalLayer.

Same bottoms (rpn_cls_prob_reshape (1, 2A, H, W), rpn_bbox_pred
(1, 4A, H, W), im_info (1, 3) = image height, width, scale), same
param_str ("'feat_stride': 16") and tops (rois (R, 5) = (0, x1, y1, x2,
y2) in image pixels, and optionally their scores (R, 1)).  Instead of
decoding anchors and running NMS it emits a fixed set of boxes laid out
on the image: the whole image, its quadrants, a centred box, thin strips
and a one-pixel box, clipped to the image as the real layer clips.
Written for pycaffe (import caffe)."""
import ast

import numpy as np

import caffe

# Boxes as fractions of the image: (x1, y1, x2, y2).
LAYOUT = np.array([
    [0.0, 0.0, 1.0, 1.0],
    [0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0],
    [0.25, 0.25, 0.75, 0.75],
    [0.0, 0.45, 1.0, 0.55], [0.45, 0.0, 0.55, 1.0],
    [0.5, 0.5, 0.5, 0.5],
], np.float32)


class ProposalLayer(caffe.Layer):
    def setup(self, bottom, top):
        params = ast.literal_eval("{" + self.param_str + "}")
        self.feat_stride = int(params["feat_stride"])
        if len(bottom) != 3:
            raise Exception("ProposalLayer takes rpn_cls_prob_reshape, rpn_bbox_pred, im_info")
        anchors = bottom[0].channels // 2
        same_map = bottom[0].data.shape[2:] == bottom[1].data.shape[2:]
        if bottom[1].channels != 4 * anchors or not same_map:
            raise Exception("scores and box deltas disagree on anchors or map size")
        if self.phase != caffe.TEST:
            raise Exception("this stand-in proposes for the TEST phase only")

    def reshape(self, bottom, top):
        top[0].reshape(len(LAYOUT), 5)
        if len(top) > 1:
            top[1].reshape(len(LAYOUT), 1)

    def forward(self, bottom, top):
        height, width = bottom[2].data[0, :2]
        size = np.array([width, height, width, height], np.float32) - 1
        top[0].data[:, 0] = 0
        top[0].data[:, 1:] = np.round(LAYOUT * size)
        if len(top) > 1:
            top[1].data[:, 0] = np.linspace(1, 0.1, len(LAYOUT))

    def backward(self, top, propagate_down, bottom):
        pass
