"""SPP-net object detection (He et al., TPAMI 2015, Sec. 4 and appendix).

- ``boxes``: pixel-inclusive boxes, IoU, NMS, box-regression targets;
- ``mapping``: image windows -> conv-map cells, and the scale per window;
- ``window_pool``: spatial pyramid pooling of many windows of one map;
- ``voc`` and ``evaluation``: Pascal VOC data and the devkit's AP;
- ``synthetic``: a small VOC-format dataset made without a download;
- ``proposals``: selective search (cached per image) and precomputed boxes;
- ``features`` and ``cache``: conv5 maps once per scale, pooled window
  features cached per image; the R-CNN path (warp every window);
- ``svd``: truncated SVD of fc layers (Fast R-CNN style);
- ``config``: the YAML settings of SVMs, fine-tuning, regression, testing;
- ``svm``: per-class linear SVMs with hard-negative mining (R-CNN);
- ``finetune``: fc6-fc8 fine-tuning on cached features;
- ``bbox_regression``: ridge box regression on pooled conv5 features;
- ``detect``: scoring, NMS, regression, evaluation and pictures.

The net layer built on them is ``WindowSPP`` (sppcaffe.layers.window_spp).
"""
