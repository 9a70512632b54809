"""A small client for TF Serving's gRPC API (the official server or `cardio serve`).

    from cardio.serving.client import Client, read_image
    with Client("localhost:8500") as client:
        [result] = client.predict([read_image("chest.dcm")], model="cardio-mobilenet-75-25",
                                  label="stable")
        result["probability"], result["predicted_label"], result["crop_box"], result["crop_qc"]
        result["ctr"], result["heart_box"], result["thorax_box"], result["ctr_qc"]   # heart U-Net

Every call has a deadline; UNAVAILABLE (server starting, restarting, overloaded) is retried
with exponential back-off;
message limits fit large 16-bit radiographs; TLS is optional. DICOM is converted to a
MONOCHROME2 PNG on the client (cardio.imaging.dicom's modality/VOI LUT and inversion), since the model
takes PNG or JPEG.
"""
from __future__ import annotations

import os
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cardio import features as F
from cardio.imaging.crop import QC_FLAGS
from cardio.imaging.ctr import CTR_QC_FLAGS

MAX_MESSAGE_BYTES = 1 << 30      # a 4096 x 4096 16-bit PNG is ~32 MB; batches of them more
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg") + DICOM_SUFFIXES


class ImageError(ValueError):
    pass


def fill_model_spec(spec, model: str, version: int | None = None, label: str | None = None,
                    signature: str = ""):
    """A request's ModelSpec, as TF Serving reads it: a version or a label (not both), or
    neither for the newest version."""
    spec.name = model
    if version is not None and label is not None:
        raise ValueError("name a version or a label, not both")
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label
    if signature:
        spec.signature_name = signature


def read_image(path: str) -> bytes:
    """A file as the model takes it: PNG and JPEG as they are, DICOM converted to PNG."""
    with open(path, "rb") as f:
        head = f.read(132)
    if path.lower().endswith(DICOM_SUFFIXES) or head[128:132] == b"DICM":
        from cardio.imaging import dicom, files
        try:
            return files.encode_png(dicom.read_dicom(path))
        except dicom.DicomError as error:
            raise ImageError(str(error)) from None
    if not (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8")):
        raise ImageError(f"{path}: not a PNG, JPEG or DICOM file")
    with open(path, "rb") as f:
        return f.read()


def image_files(paths) -> list[str]:
    """Files named, and the images (by suffix) in directories named, in a stable order."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise ImageError(f"{path}: no such file or directory")
    return files


class Client:
    def __init__(self, target: str, timeout: float = 30.0, retries: int = 4, tls: bool = False,
                 root_certificates: bytes | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.timeout, self.retries = timeout, retries
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.channel.close()

    def _call(self, method, request):
        """One RPC with a deadline; UNAVAILABLE (server starting, restarting, overloaded) is
        retried with exponential back-off (0.5 s, 1 s, 2 s, ... at most 8 s apart)."""
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
                time.sleep(min(0.5 * 2 ** attempt, 8.0))

    def predict_raw(self, inputs: dict, model: str, version: int | None = None,
                    label: str | None = None, signature: str = "serving_default",
                    output_filter=()) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        fill_model_spec(request.model_spec, model, version, label, signature)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                          else tf.make_tensor_proto(value))
        return self._call(self.predictions.Predict, request)

    def predict(self, images: list[bytes], model: str, version: int | None = None,
                label: str | None = None) -> list[dict]:
        """Encoded radiographs -> one dict per image: probability, predicted_label, crop_box,
        crop_qc (the names of the raised QC flags), model and version that answered; with a
        heart U-Net in the model, ctr, heart_box, thorax_box and ctr_qc too."""
        response = self.predict_raw({F.IMAGE_BYTES: np.array(images, dtype=object)}, model,
                                    version, label)
        outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        results = []
        for i in range(len(images)):
            result = {"model": response.model_spec.name,
                      "version": response.model_spec.version.value,
                      "probability": float(outputs["probability"][i]),
                      "predicted_label": int(outputs["predicted_label"][i])}
            results.append(optional_outputs(result, {k: v[i] for k, v in outputs.items()}))
        return results

    def classify(self, images: list[bytes], model: str, version: int | None = None,
                 label: str | None = None, signature: str = "classify") -> list[dict]:
        """{class name: score} per image, through TF Serving's Classify API."""
        request = classification_pb2.ClassificationRequest()
        fill_model_spec(request.model_spec, model, version, label, signature)
        for image in images:
            request.input.example_list.examples.add().features.feature[
                "image"].bytes_list.value.append(image)
        response = self._call(self.predictions.Classify, request)
        return [{c.label: c.score for c in row.classes}
                for row in response.result.classifications]

    def metadata(self, model: str, version: int | None = None, label: str | None = None):
        """The model's SignatureDefMap."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        fill_model_spec(request.model_spec, model, version, label)
        response = self._call(self.predictions.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return response.model_spec.version.value, signatures

    def status(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        """{version: state name} for the model's versions."""
        request = get_model_status_pb2.GetModelStatusRequest()
        fill_model_spec(request.model_spec, model, version, label)
        response = self._call(self.models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return {s.version: states.Name(s.state) for s in response.model_version_status}


class RestClient:
    """The same predictions over TF Serving's REST API (`cardio predict --rest URL`): a plain
    HTTP POST of {"instances": [{"b64": ...}]}; UNAVAILABLE (503) is retried like gRPC's."""

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 4):
        self.url, self.timeout, self.retries = url.rstrip("/"), timeout, retries

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def post(self, path: str, body: dict) -> dict:
        import json
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                text = error.read().decode(errors="replace")
                if error.code != 503 or attempt == self.retries:
                    try:
                        message = json.loads(text)["error"]
                    except (ValueError, KeyError, TypeError):
                        message = text
                    raise RestError(error.code, message) from None
            except urllib.error.URLError as error:
                if attempt == self.retries:
                    raise RestError(503, str(error.reason)) from None
            time.sleep(min(0.5 * 2 ** attempt, 8.0))

    def predict(self, images: list[bytes], model: str, version: int | None = None,
                label: str | None = None) -> list[dict]:
        import base64

        path = f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else
                                        f"/labels/{label}" if label is not None else "")
        body = self.post(f"{path}:predict", {"instances": [
            {F.IMAGE_BYTES: {"b64": base64.b64encode(image).decode()}} for image in images]})
        results = []
        for row in body["predictions"]:
            # TF Serving's REST answer does not say which version answered.
            result = {"model": model, "version": version if version is not None else label,
                      "probability": float(row["probability"]),
                      "predicted_label": int(row["predicted_label"])}
            results.append(optional_outputs(result, row))
        return results


class RestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def predict_files(client: Client, files: list[str], model: str, version: int | None = None,
                  label: str | None = None, batch_size: int = 1):
    """Yields (file, result dict or error message) per file, `batch_size` images per request
    (the server batches across requests, so 1 costs little)."""
    for start in range(0, len(files), batch_size):
        chunk, images = [], []
        for path in files[start:start + batch_size]:
            try:
                images.append(read_image(path))
                chunk.append(path)
            except (ImageError, OSError) as error:
                yield path, str(error)
        if not chunk:
            continue
        try:
            results = client.predict(images, model, version, label)
        except grpc.RpcError as error:
            for path in chunk:
                yield path, f"{error.code().name}: {error.details()}"
            continue
        except RestError as error:
            for path in chunk:
                yield path, str(error)
            continue
        yield from zip(chunk, results)


def optional_outputs(result: dict, row: dict) -> dict:
    """Adds one image's crop and CTR outputs, where the model returns them, to its result:
    boxes rounded, QC flags as the names of those raised."""
    for key in (F.CROP_BOX, F.HEART_BOX, F.THORAX_BOX):
        if key in row:
            result[key] = [round(float(v), 4) for v in row[key]]
    for key, names in ((F.CROP_QC, QC_FLAGS), (F.CTR_QC, CTR_QC_FLAGS)):
        if key in row:
            result[key] = [name for name, on in zip(names, row[key]) if on]
    if F.CTR in row:
        result[F.CTR] = round(float(row[F.CTR]), 4)
    return result


def format_row(path: str, result) -> str:
    if isinstance(result, str):
        return f"{path}  ERROR {result}"
    label = "cardiomegaly" if result["predicted_label"] else "normal"
    box = " ".join(f"{v:.3f}" for v in result.get("crop_box", []))
    qc = ",".join(result.get("crop_qc", [])) or "-"
    ctr = ""
    if F.CTR in result:
        measured = result[F.CTR] >= 0
        ctr = (f"ctr={result[F.CTR]:.3f}" if measured else "ctr=-") + \
            f" ctr_qc={','.join(result.get(F.CTR_QC, [])) or '-'}  "
    return (f"{path}  {result['probability']:.4f}  {label:<12}  [{box}]  qc={qc}  {ctr}"
            f"{result['model']}/{result['version'] if result['version'] is not None else '-'}")
