"""README: `import sppcaffe` loads neither SciPy, scikit-image, h5py nor
OpenCV (they are imported where used), so every tool starts quickly, and a
net of raw datums never loads OpenCV."""
import subprocess
import sys


def test_import_sppcaffe_leaves_heavy_libraries_unloaded():
    code = ("import sys, sppcaffe; "
            "print(sorted(m for m in ('scipy', 'skimage', 'h5py', 'cv2', 'matplotlib', 'torch', 'onnx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_net_of_raw_datums_trains_without_opencv(tmp_path):
    """LeNet's Data layer over raw (not encoded) datums: no image is decoded
    or resized, so OpenCV is never imported."""
    code = f"""
import sys, numpy as np, sppcaffe
from sppcaffe.data.datum import array_to_datum
from sppcaffe.data.db import LMDBWriter
with LMDBWriter({str(tmp_path / "db")!r}) as db:
    for i in range(8):
        db.put(b"%08d" % i, array_to_datum(np.full((1, 6, 6), i, np.uint8), i % 2).SerializeToString())
"""
    net = f"""
layer {{ name: "d" type: "Data" top: "x" top: "y" include {{ phase: TRAIN }}
  data_param {{ source: "{tmp_path / 'db'}" batch_size: 4 backend: LMDB }}
  transform_param {{ scale: 0.01 mirror: true crop_size: 4 }} }}
layer {{ name: "c" type: "Convolution" bottom: "x" top: "c"
  convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "c" top: "ip"
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "loss" }}
"""
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" max_iter: 3 '
        f'snapshot_prefix: "{tmp_path / "snap"}" solver_mode: CPU')
    code += f"""
s = sppcaffe.get_solver({str(tmp_path / "solver.prototxt")!r})
s.step(3)
print(np.isfinite(s.net.blobs["loss"].data).all(), "cv2" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"], out.stdout
