"""README: `import sppcaffe` loads neither SciPy, scikit-image nor h5py
(they are imported where used), so every tool starts quickly."""
import subprocess
import sys


def test_import_sppcaffe_leaves_heavy_libraries_unloaded():
    code = ("import sys, sppcaffe; "
            "print(sorted(m for m in ('scipy', 'skimage', 'h5py', 'matplotlib', 'torch', 'onnx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
