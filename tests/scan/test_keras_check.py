"""Keras v3 archives and HDF5 files: the model configuration is read as data, never by Keras;
Lambda layers and bytecode are dangerous, custom objects suspicious, unreadable configurations
inconclusive. ``keras_samples/`` holds files written by Keras 3 itself (see make_samples.py);
the others are built here in the layouts Keras 3 and Keras 2 write."""

import base64
import io
import json
import marshal
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from trojanscope.scan.findings import FileReport, overall_verdict
from trojanscope.scan.keras_check import check_config
from trojanscope.scan.scanner import Scanner

SAMPLES = Path(__file__).parent / "keras_samples"


def rules(reports) -> list[str]:
    return sorted(f.rule for r in reports for f in r.findings)


def scan_path(path: Path):
    reports = Scanner().scan_paths([path])
    return overall_verdict(reports), reports


def scan(data: bytes, name: str = "model.keras"):
    reports = Scanner().scan_bytes(data, name)
    return overall_verdict(reports), reports


# -- genuine Keras 3 files ---------------------------------------------------------------------


def test_a_genuine_benign_keras_file_is_clean():
    result, reports = scan_path(SAMPLES / "benign.keras")
    assert result == "clean", [r.as_dict() for r in reports]
    top = reports[0]
    assert top.metadata["format_detail"] == "Keras v3 archive"
    assert top.metadata["keras_model"] == "Sequential"
    assert top.metadata["keras_version"].startswith("3.")
    weights = next(r for r in reports if r.location.endswith("model.weights.h5"))
    assert weights.format == "hdf5" and weights.verdict == "clean"
    assert weights.metadata["hdf5_datasets"] > 0


def test_a_genuine_lambda_layer_is_dangerous():
    result, reports = scan_path(SAMPLES / "lambda.keras")
    assert result == "dangerous"
    assert rules(reports) == ["keras.lambda-layer"]
    assert "marshalled bytecode" in reports[0].findings[0].message


def test_a_genuine_custom_layer_is_suspicious():
    result, reports = scan_path(SAMPLES / "custom.keras")
    assert result == "suspicious"
    assert rules(reports) == ["keras.custom-object"]
    assert "samplepkg>ScaledDense" in reports[0].findings[0].message


def test_genuine_legacy_h5_files_written_by_keras_3():
    result, reports = scan_path(SAMPLES / "benign.h5")
    assert result == "clean", [r.as_dict() for r in reports]
    assert reports[0].metadata["format_detail"] == "Keras HDF5 model"
    assert reports[0].metadata["backend"] == "torch"
    result, reports = scan_path(SAMPLES / "lambda.h5")
    assert result == "dangerous" and rules(reports) == ["keras.lambda-layer"]


# -- Keras 3 archives built here ---------------------------------------------------------------


def keras_object(module, class_name, config, registered_name=None, **extra):
    return {
        "module": module,
        "class_name": class_name,
        "config": config,
        "registered_name": registered_name,
        **extra,
    }


def dense(name, units=2, **config):
    return keras_object(
        "keras.layers",
        "Dense",
        {
            "name": name,
            "trainable": True,
            "dtype": keras_object("keras", "DTypePolicy", {"name": "float32"}),
            "units": units,
            "activation": "linear",
            "use_bias": True,
            "kernel_initializer": keras_object("keras.initializers", "GlorotUniform", {}),
            **config,
        },
        build_config={"input_shape": [None, 4]},
    )


def sequential(*layers, compile_config=None):
    config = {"name": "sequential", "trainable": True, "layers": list(layers)}
    model = keras_object("keras", "Sequential", config, build_config={"input_shape": [None, 4]})
    if compile_config is not None:
        model["compile_config"] = compile_config
    return model


def bytecode() -> str:
    """A code object as Keras' func_dump writes it (base64 marshal); never executed."""
    return base64.encodebytes(marshal.dumps((lambda t: t * 2).__code__)).decode()


def keras_zip(config, metadata=True, weights=True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        if metadata:
            archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        if weights:
            inner = io.BytesIO()
            with h5py.File(inner, "w") as h5:
                h5.create_dataset("layers/dense/vars/0", data=np.zeros((4, 2), "float32"))
            archive.writestr("model.weights.h5", inner.getvalue())
    return buf.getvalue()


def test_a_built_benign_archive_is_clean():
    result, reports = scan(keras_zip(sequential(dense("a"), dense("b"))))
    assert result == "clean", [r.as_dict() for r in reports]


def test_a_lambda_layer_is_dangerous():
    lam = keras_object(
        "keras.layers",
        "Lambda",
        {
            "name": "double",
            "function": {
                "class_name": "__lambda__",
                "config": {"code": bytecode(), "defaults": None, "closure": None},
            },
            "arguments": {},
        },
    )
    result, reports = scan(keras_zip(sequential(dense("a"), lam)))
    assert result == "dangerous"
    assert rules(reports) == ["keras.lambda-layer"]  # the bytecode inside is not counted twice
    assert "'double'" in reports[0].findings[0].message


def test_bytecode_outside_a_lambda_layer_is_dangerous():
    # what Keras 3 writes for Dense(activation=lambda x: ...)
    layer = dense("a", activation={"value": [bytecode(), None, None]})
    result, reports = scan(keras_zip(sequential(layer)))
    assert result == "dangerous" and rules(reports) == ["keras.lambda-function"]


def test_custom_objects_are_suspicious():
    custom_layer = keras_object(None, "MyDense", {"name": "x"}, registered_name="evilpkg>MyDense")
    compile_config = {
        "optimizer": keras_object("keras.optimizers", "Adam", {}, registered_name="Adam"),
        "loss": keras_object("builtins", "function", "Custom>my_loss", registered_name="function"),
        "metrics": ["mae"],
    }
    result, reports = scan(keras_zip(sequential(custom_layer, compile_config=compile_config)))
    assert result == "suspicious"
    messages = " ".join(f.message for r in reports for f in r.findings)
    assert rules(reports) == ["keras.custom-object"] * 2
    assert "evilpkg>MyDense" in messages and "Custom>my_loss" in messages


def test_builtin_names_and_keras_modules_are_not_findings():
    loss = keras_object("builtins", "function", "mean_squared_error", registered_name="function")
    opt = keras_object("keras.src.backend.torch.optimizers.torch_adam", "Adam", {}, "Adam")
    model = sequential(dense("a"), compile_config={"optimizer": opt, "loss": loss})
    assert scan(keras_zip(model))[0] == "clean"


def test_a_module_outside_keras_is_suspicious_and_a_dangerous_one_is_dangerous():
    other = sequential(keras_object("mylib.layers", "Fancy", {"name": "f"}))
    result, reports = scan(keras_zip(other))
    assert result == "suspicious" and "module mylib.layers" in reports[0].findings[0].message
    system = sequential(dense("a", activation=keras_object("os", "function", "system")))
    result, reports = scan(keras_zip(system))
    assert result == "dangerous" and rules(reports) == ["keras.dangerous-import"]
    evil = keras_object("builtins", "function", "eval", registered_name="function")
    result, reports = scan(keras_zip(sequential(dense("a", activation=evil))))
    assert result == "dangerous" and rules(reports) == ["keras.dangerous-import"]


@pytest.mark.parametrize(
    "config",
    ['{"module": "keras", "class_name": ', "[1, 2", "\xff not json"],
    ids=["cut", "unclosed", "binary"],
)
def test_a_bad_config_is_inconclusive(config):
    result, reports = scan(keras_zip(config))
    assert result == "inconclusive"
    assert "config.json" in reports[0].incomplete


def test_a_config_that_is_not_a_model_is_inconclusive():
    result, reports = scan(keras_zip({"hidden_size": 8}))
    assert result == "inconclusive"
    assert "not a Keras model configuration" in reports[0].incomplete


def test_a_hostile_nesting_depth_is_inconclusive_without_recursion():
    deep = "[" * 100_000 + "]" * 100_000  # beyond what json.loads accepts
    result, reports = scan(keras_zip(deep))
    assert result == "inconclusive" and "nested" in reports[0].incomplete
    config = sequential(dense("a", extra=json.loads("[" * 600 + "]" * 600)))
    result, reports = scan(keras_zip(config))  # parses, but deeper than the walker goes
    assert result == "inconclusive" and "nested deeper" in reports[0].incomplete


def test_a_zip_with_only_config_json_is_still_checked():
    lam = keras_object("keras.layers", "Lambda", {"name": "l", "function": {}})
    bare = keras_zip(sequential(lam), metadata=False, weights=False)
    result, reports = scan(bare)  # Keras builds the model from config.json alone
    assert result == "dangerous" and rules(reports) == ["keras.lambda-layer"]
    hf = keras_zip({"hidden_size": 8, "model_type": "bert"}, metadata=False, weights=False)
    assert scan(hf)[0] == "clean"  # not a Keras configuration, and not claimed as one


def test_findings_per_rule_are_capped():
    lams = [keras_object("keras.layers", "Lambda", {"name": f"l{i}"}) for i in range(500)]
    report = FileReport("x", "zip")
    check_config(sequential(*lams), report, "config.json")
    assert len(report.findings) == 50
    assert report.metadata["keras_findings_not_listed"] == 450
    assert report.verdict == "dangerous"


# -- HDF5 / legacy Keras 2 files ---------------------------------------------------------------


def h5_file(attrs: dict | None = None, build=None, userblock: int = 0) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w", userblock_size=userblock) as h5:
        for key, value in (attrs or {}).items():
            h5.attrs[key] = value
        group = h5.create_group("model_weights/dense/dense")
        group.create_dataset("kernel:0", data=np.ones((4, 2), "float32"))
        if build is not None:
            build(h5)
    return buf.getvalue()


def keras2_config(*layers) -> bytes:
    """``model_config`` as Keras 2 (tf.keras) wrote it: no module fields, UTF-8 bytes."""
    return json.dumps(
        {"class_name": "Sequential", "config": {"name": "sequential", "layers": list(layers)}}
    ).encode()


KERAS2_DENSE = {
    "class_name": "Dense",
    "config": {"name": "dense", "units": 2, "activation": "relu", "dtype": "float32"},
}
KERAS2_ATTRS = {"keras_version": b"2.15.0", "backend": b"tensorflow"}


def test_a_keras2_h5_model_is_clean_and_its_metadata_kept():
    data = h5_file({**KERAS2_ATTRS, "model_config": keras2_config(KERAS2_DENSE)})
    result, reports = scan(data, "model.h5")
    assert result == "clean", [r.as_dict() for r in reports]
    meta = reports[0].metadata
    assert meta["keras_version"] == "2.15.0" and meta["backend"] == "tensorflow"
    assert meta["format_detail"] == "Keras HDF5 model"


def test_a_keras2_lambda_layer_is_dangerous():
    lam = {
        "class_name": "Lambda",
        "config": {
            "name": "lambda",
            "function": [bytecode(), None, None],
            "function_type": "lambda",
            "module": "__main__",
            "output_shape": None,
            "arguments": {},
        },
    }
    data = h5_file({**KERAS2_ATTRS, "model_config": keras2_config(KERAS2_DENSE, lam)})
    result, reports = scan(data, "model.h5")
    assert result == "dangerous" and rules(reports) == ["keras.lambda-layer"]


def test_a_keras2_training_config_naming_custom_code_is_suspicious():
    training = json.dumps({"loss": "Custom>focal_loss", "metrics": [["accuracy"]]}).encode()
    data = h5_file(
        {**KERAS2_ATTRS, "model_config": keras2_config(KERAS2_DENSE), "training_config": training}
    )
    result, reports = scan(data, "model.h5")
    assert result == "suspicious" and rules(reports) == ["keras.custom-object"]


def test_a_keras2_tf_op_lambda_is_reported():
    op = {"class_name": "TFOpLambda", "config": {"name": "tf.math.add", "function": "math.add"}}
    data = h5_file({"model_config": keras2_config(op)})
    result, reports = scan(data, "model.h5")
    assert result == "suspicious" and rules(reports) == ["keras.tf-op"]
    write = {"class_name": "TFOpLambda", "config": {"name": "w", "function": "io.write_file"}}
    result, reports = scan(h5_file({"model_config": keras2_config(write)}), "model.h5")
    assert result == "dangerous" and rules(reports) == ["keras.tf-op"]


def test_an_h5_without_keras_config_is_clean_arrays_only():
    result, reports = scan(h5_file(), "arrays.h5")
    assert result == "clean", [r.as_dict() for r in reports]
    assert "arrays only" in reports[0].metadata["format_detail"]


def test_an_h5_after_a_user_block_is_read():
    data = h5_file({"model_config": keras2_config(KERAS2_DENSE)}, userblock=1024)
    result, reports = scan(data, "model.h5")
    assert result == "clean", [r.as_dict() for r in reports]
    assert reports[0].metadata["user_block"] == 1024
    assert reports[0].metadata["keras_model"] == "Sequential"


def test_an_h5_model_config_with_bad_json_is_inconclusive():
    result, reports = scan(h5_file({"model_config": b'{"class_name": "Seq'}), "model.h5")
    assert result == "inconclusive" and "model_config" in reports[0].incomplete


def test_an_hdf5_file_h5py_cannot_open_is_inconclusive():
    data = h5_file()
    for broken in (data[:600], b"\x89HDF\r\n\x1a\n" + b"\x00" * 64):
        result, reports = scan(broken, "model.h5")
        assert result == "inconclusive" and "HDF5" in reports[0].incomplete


def test_links_and_data_in_other_files_are_reported():
    def build(h5):
        h5["elsewhere"] = h5py.ExternalLink("/etc/passwd", "/")
        h5.create_dataset("ext", shape=(4,), dtype="u1", external=[("/etc/hostname", 0, 4)])

    result, reports = scan(h5_file(build=build), "model.h5")
    assert result == "suspicious"
    assert rules(reports) == ["hdf5.external-data", "hdf5.external-link"]


def test_pytables_object_arrays_are_flagged_not_trusted():
    def build(h5):
        blob = h5.create_dataset("frame/values", shape=(1,), dtype=h5py.vlen_dtype("u1"))
        blob.attrs["CLASS"] = b"VLARRAY"
        blob.attrs["PSEUDOATOM"] = b"object"

    result, reports = scan(h5_file(build=build), "frame.h5")  # the pickles are not scanned
    assert result == "inconclusive" and rules(reports) == ["hdf5.pickled-objects"]
    assert "not scanned" in reports[0].incomplete
