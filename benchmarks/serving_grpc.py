"""gRPC serving against the same SavedModel called in-process, on the same inputs, same process.

  latency      Predict at batch 1, batching off: p50 and p99 per request. Each image is sent
               once in-process and once over gRPC, alternately, so both see the same machine
               load. Target: gRPC p50 / in-process p50 <= 1.15.
  throughput   8 concurrent clients, one image per request: in-process (8 threads calling the
               signature) against gRPC with server-side batching on. Blocks alternate. Target:
               gRPC / in-process images per second >= 0.9.
  load test    a fixed number of valid requests at concurrency 16 over loopback: errors must be 0.
  REST         the latency loop also sends each image over TF Serving's REST API (a plain HTTP
               POST of b64 instances) to the same server. Target: REST p50 / gRPC p50 <= 1.3.
  raw 2048     one 2048 x 2048 16-bit PNG through serving_default over gRPC, against the sum
               of its parts timed alone in the same process (decode, U-Net, crop, backbone,
               CTR).
               Target: end to end / sum of parts <= 1.2.

The model is the demo's: the lung U-Net + crop + MobileNet (alpha 0.25, 128 px, random weights:
speed does not depend on them) and the served CTR (the heart U-Net beside the lung U-Net, as every
export with the shipped segmenters has it), served from 1024-1280 px synthetic radiographs as
PNGs.
"""
from __future__ import annotations

import concurrent.futures
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2

from cardio import features as F
from cardio.data import synth
from cardio.imaging import files, unet
from cardio.serving import client as client_lib, config as config_lib, server as server_lib
from cardio.trainer import export, model as model_lib

MODEL = "cardio-bench"
LATENCY_REQUESTS = 60
THROUGHPUT_REQUESTS = 96          # per block; two blocks per side
CONCURRENCY = 8
LOAD_REQUESTS = 400
LOAD_CONCURRENCY = 16


def _images(n: int) -> list[bytes]:
    sites = ("site-a", "site-b")
    return [files.encode_png(synth.sample(7, i, sites[i % 2], f"p{i}").image) for i in range(n)]


def _export(root: str) -> tuple[str, object, object, object]:
    classifier = model_lib.build_model("mobilenet_025", 128, weights="random")
    segmenter, heart = unet.load(), unet.load(target="heart")
    export_dir = os.path.join(root, MODEL, "1")
    # As the pipeline exports with the shipped segmenters: the CTR's heart U-Net too.
    export.export(classifier, export_dir, 128, 0.5, segmenter, crop_size=256, heart_unet=heart)
    return export_dir, classifier, segmenter, heart


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    return (float(np.percentile(seconds, 50)) * 1000, float(np.percentile(seconds, 99)) * 1000)


def _concurrently(call, images: list[bytes], concurrency: int) -> float:
    """Seconds to run `call(image)` for every image with `concurrency` threads."""
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        list(pool.map(call, images))
        return time.perf_counter() - start


def main():
    with tempfile.TemporaryDirectory() as root:
        print("\nExporting the demo's model and drawing radiographs ...", flush=True)
        export_dir, classifier, segmenter, heart = _export(root)
        images = _images(16)
        signature = tf.saved_model.load(export_dir).signatures[F.SERVING_DEFAULT]

        def in_process(image):
            return signature(image_bytes=tf.constant([image]))[F.PROBABILITY].numpy()

        base = os.path.join(root, MODEL)
        plain = server_lib.Server(server_lib.ServerOptions(
            port=0, model_base_path=base, model_name=MODEL, rest_api_port=-1), host="127.0.0.1")
        batching_file = os.path.join(root, config_lib.BATCHING_PARAMETERS)
        with open(batching_file, "w") as f:
            f.write(config_lib.render_batching_parameters(config_lib.BatchingConfig(
                max_batch_size=CONCURRENCY, batch_timeout_micros=2000, num_batch_threads=2)))
        batched = server_lib.Server(server_lib.ServerOptions(
            port=0, model_base_path=base, model_name=MODEL, enable_batching=True,
            batching_parameters_file=batching_file), host="127.0.0.1")
        with plain, batched, \
                client_lib.Client(f"127.0.0.1:{plain.port}") as plain_client, \
                client_lib.Client(f"127.0.0.1:{batched.port}") as batched_client, \
                client_lib.RestClient(f"http://127.0.0.1:{plain.rest_port}") as rest_client:
            def over_grpc(client):
                return lambda image: client.predict([image], MODEL)[0]["probability"]

            for image in images[:4]:      # both sides warm (tracing happened at load)
                in_process(image), over_grpc(plain_client)(image)
            over_rest = over_grpc(rest_client)
            over_rest(images[0])
            local, remote, rest = [], [], []
            for i in range(LATENCY_REQUESTS):
                image = images[i % len(images)]
                start = time.perf_counter()
                expected = in_process(image)[0]
                local.append(time.perf_counter() - start)
                start = time.perf_counter()
                got = over_grpc(plain_client)(image)
                remote.append(time.perf_counter() - start)
                start = time.perf_counter()
                got_rest = over_rest(image)
                rest.append(time.perf_counter() - start)
                assert abs(got - expected) < 1e-5 and abs(got_rest - expected) < 1e-5, \
                    (got, got_rest, expected)
            (local_p50, local_p99), (remote_p50, remote_p99) = (_percentiles(local),
                                                                _percentiles(remote))
            rest_p50, rest_p99 = _percentiles(rest)
            raw = _raw_2048(plain_client, classifier, segmenter, heart)

            work = [images[i % len(images)] for i in range(THROUGHPUT_REQUESTS)]
            local_s = remote_s = 0.0
            for _ in range(2):
                local_s += _concurrently(in_process, work, CONCURRENCY)
                remote_s += _concurrently(over_grpc(batched_client), work, CONCURRENCY)
            local_ips, remote_ips = 2 * len(work) / local_s, 2 * len(work) / remote_s
            servable = batched.manager.resolve(_spec())
            calls_before = servable.model_calls

            errors = []

            def load(image):
                try:
                    over_grpc(batched_client)(image)
                except Exception as error:   # counted, reported
                    errors.append(error)

            load_s = _concurrently(load, [images[i % len(images)] for i in range(LOAD_REQUESTS)],
                                   LOAD_CONCURRENCY)
            load_calls = servable.model_calls - calls_before

    print(f"\ngRPC serving vs the same SavedModel in-process ({os.cpu_count()} cores; demo model: "
          f"U-Net crop + MobileNet 0.25 at 128 px; 1024-1280 px PNG radiographs)")
    print(f"{'what':<52}{'p50 ms':>9}{'p99 ms':>9}{'img/s':>8}{'ratio':>8}{'target':>9}")
    print(f"{'in-process, batch 1 (baseline)':<52}{local_p50:>9.1f}{local_p99:>9.1f}"
          f"{'':>8}{1.0:>8.2f}")
    print(f"{'gRPC Predict, batch 1, batching off':<52}{remote_p50:>9.1f}{remote_p99:>9.1f}"
          f"{'':>8}{remote_p50 / local_p50:>8.2f}{'<= 1.15':>9}")
    print(f"{'REST predict (b64 instances), batch 1, batching off':<52}{rest_p50:>9.1f}"
          f"{rest_p99:>9.1f}{'':>8}{rest_p50 / remote_p50:>8.2f}{'<= 1.3':>9}  (over gRPC)")
    print(f"{f'in-process, {CONCURRENCY} threads (baseline)':<52}{'':>9}{'':>9}"
          f"{local_ips:>8.1f}{1.0:>8.2f}")
    print(f"{f'gRPC, {CONCURRENCY} clients, batching on':<52}{'':>9}{'':>9}"
          f"{remote_ips:>8.1f}{remote_ips / local_ips:>8.2f}{'>= 0.9':>9}")
    parts = " + ".join(f"{name} {ms:.0f}" for name, ms in raw["parts"].items())
    print(f"{'raw 2048x2048 16-bit PNG: sum of parts (baseline)':<52}{raw['sum']:>9.1f}"
          f"{'':>9}{'':>8}{1.0:>8.2f}  ({parts} ms)")
    print(f"{'raw 2048x2048 16-bit PNG: gRPC serving_default':<52}{raw['end_to_end']:>9.1f}"
          f"{'':>9}{'':>8}{raw['end_to_end'] / raw['sum']:>8.2f}{'<= 1.2':>9}")
    print(f"\nLoad test: {LOAD_REQUESTS} valid requests, {LOAD_CONCURRENCY} concurrent clients, "
          f"loopback: {len(errors)} errors, {LOAD_REQUESTS / load_s:.1f} requests/s, "
          f"{load_calls} model calls (batching)")
    _fixed_overhead()
    if errors:
        raise SystemExit(f"load test: {len(errors)} failed requests, first: {errors[0]}")


def _raw_2048(client, classifier, segmenter, heart, runs: int = 12) -> dict:
    """p50 ms of a raw 2048 x 2048 16-bit radiograph end to end over gRPC, and of each part of
    serving_default alone (as trainer/export.py chains them), in this process."""
    from cardio.imaging import crop, ctr, decode

    image = files.encode_png(synth.sample(7, 0, "site-a", "p0", size=2048).image)
    steps = {
        "decode": tf.function(lambda e: decode.decode_radiograph(e, decode.MAX_SERVING_PIXELS)),
        "U-Net": tf.function(lambda x: segmenter(crop.unet_input(x)[tf.newaxis],
                                                 training=False)[0, :, :, 0]),
        "crop": tf.function(lambda x, p: crop.crop_from_probability(x, p, 256)[0]),
        "backbone": tf.function(lambda c: classifier(decode.resize_for_model(
            tf.cast(c, tf.float32) / 65535.0, 128)[tf.newaxis], training=False)),
        # The CTR: the lung U-Net on the window-stretched image, the heart U-Net, the widths.
        "CTR": tf.function(lambda x: ctr.measure(*ctr.probabilities(segmenter, heart, x))),
    }

    def chain():
        decoded = steps["decode"](tf.constant(image))
        probability = steps["U-Net"](decoded)
        cropped = steps["crop"](decoded, probability)
        return decoded, probability, cropped

    decoded, probability, cropped = chain()      # trace once
    steps["backbone"](cropped)
    client.predict([image], MODEL)
    inputs = {"decode": (tf.constant(image),), "U-Net": (decoded,), "crop": (decoded, probability),
              "backbone": (cropped,), "CTR": (decoded,)}
    times = {name: [] for name in steps}
    end_to_end = []
    for _ in range(runs):           # interleaved, so both see the same machine load
        for name, step in steps.items():
            start = time.perf_counter()
            result = step(*inputs[name])
            tf.nest.map_structure(lambda t: t.numpy(), result)
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        client.predict([image], MODEL)
        end_to_end.append(time.perf_counter() - start)
    parts = {name: _percentiles(t)[0] for name, t in times.items()}
    return {"parts": parts, "sum": sum(parts.values()), "end_to_end": _percentiles(end_to_end)[0]}


def _fixed_overhead(requests: int = 200):
    """The same comparison with a model that costs almost nothing: what gRPC adds per request."""
    import tf_keras as keras

    with tempfile.TemporaryDirectory() as root:
        features = keras.Input([16, 16, 3])
        backbone = keras.Model(features, keras.layers.GlobalAveragePooling2D()(
            keras.layers.Conv2D(2, 3)(features)))
        inputs = keras.Input([16, 16, 3])
        tiny = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(backbone(inputs)))
        export_dir = os.path.join(root, MODEL, "1")
        export.export(tiny, export_dir, 16, 0.5)
        image = files.encode_png(np.full((64, 64), 30000, np.uint16))
        signature = tf.saved_model.load(export_dir).signatures[F.SERVING_DEFAULT]
        server = server_lib.Server(server_lib.ServerOptions(
            port=0, model_base_path=os.path.join(root, MODEL), model_name=MODEL), host="127.0.0.1")
        local, remote = [], []
        with server, client_lib.Client(f"127.0.0.1:{server.port}") as client:
            for i in range(requests + 10):
                start = time.perf_counter()
                signature(image_bytes=tf.constant([image]))
                middle = time.perf_counter()
                client.predict([image], MODEL)
                if i >= 10:
                    local.append(middle - start)
                    remote.append(time.perf_counter() - middle)
    (local_p50, _), (remote_p50, _) = _percentiles(local), _percentiles(remote)
    print(f"Fixed gRPC cost per request (a 16 px model, {requests} requests): in-process p50 "
          f"{local_p50:.2f} ms, gRPC p50 {remote_p50:.2f} ms, +{remote_p50 - local_p50:.2f} ms")


def _spec():
    return model_pb2.ModelSpec(name=MODEL)


if __name__ == "__main__":
    main()
