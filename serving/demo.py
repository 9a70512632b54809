"""The demo's last step: serve the pushed models over TF Serving's gRPC API and ask them about a
few radiographs of each site, exactly as a clinical system would (raw PNGs, the `stable` label)."""
from __future__ import annotations

import collections
import glob
import os

import tensorflow as tf

from cardio import features as F
from cardio.serving import client as client_lib, config as config_lib, server as server_lib


def sample_images(data_root: str, per_site: int, span: int = 1) -> list[dict]:
    """The first `per_site` raw test/external radiographs of each site, as stored (PNG)."""
    files = sorted(glob.glob(os.path.join(data_root, f"span-{span}", F.TEST, "*.tfrecord.gz")) +
                   glob.glob(os.path.join(data_root, f"span-{span}", F.EXTERNAL, "*.tfrecord.gz")))
    taken = collections.defaultdict(list)
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        feature = example.features.feature
        site = feature[F.SITE].bytes_list.value[0].decode()
        if len(taken[site]) < per_site:
            taken[site].append({"site": site,
                                "image_id": feature[F.IMAGE_ID].bytes_list.value[0].decode(),
                                "label": int(feature[F.LABEL].int64_list.value[0]),
                                "image": feature[F.IMAGE].bytes_list.value[0]})
    return [image for site in sorted(taken) for image in taken[site]]


def serve_and_predict(serving_root: str, data_root: str, echo, per_site: int = 3,
                      label: str = config_lib.STABLE) -> dict:
    config_path = os.path.join(serving_root, config_lib.MODELS_CONFIG)
    if not os.path.exists(config_path):
        echo("\nNothing to serve: no model was blessed and pushed.")
        return {"served": False}
    options = server_lib.ServerOptions(
        port=0, model_config_file=config_path, enable_batching=True,
        batching_parameters_file=os.path.join(serving_root, config_lib.BATCHING_PARAMETERS))
    images = sample_images(data_root, per_site)
    summary = {"served": True, "label": label, "models": {}}
    with server_lib.Server(options, host="127.0.0.1") as server:
        target = f"127.0.0.1:{server.port}"
        echo(f"\nServing {config_path} over TF Serving's gRPC API at {target} (cardio serve); "
             f"{per_site} raw radiographs per site, label '{label}':")
        with client_lib.Client(target) as client:
            for model in sorted(server.manager.labels()):
                results = client.predict([i["image"] for i in images], model, label=label)
                echo(f"{model} version {results[0]['version']}:")
                echo(f"  {'site':<8} {'image':<16} {'truth':<12} {'probability':>11}  "
                     f"{'predicted':<12} crop box (y0 x0 y1 x1)        QC")
                for image, result in zip(images, results):
                    echo(f"  {image['site']:<8} {image['image_id']:<16} "
                         f"{'cardiomegaly' if image['label'] else 'normal':<12} "
                         f"{result['probability']:>11.4f}  "
                         f"{'cardiomegaly' if result['predicted_label'] else 'normal':<12} "
                         f"{' '.join(f'{v:.3f}' for v in result.get('crop_box', [])) or '-':<29}  "
                         f"{','.join(result.get('crop_qc', [])) or '-'}")
                summary["models"][model] = {
                    "version": results[0]["version"],
                    "predictions": {site: sum(1 for i in images if i["site"] == site)
                                    for site in sorted({i["site"] for i in images})},
                    "probabilities": [round(r["probability"], 6) for r in results]}
    return summary
