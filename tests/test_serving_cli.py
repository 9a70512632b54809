"""`cardio predict`, `cardio serve` and `cardio release` as an operator runs them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from serving_helpers import REPO, export_version, free_port, jpeg, png, start_cardio

from cardio import cli
from cardio.imaging import dicom
from cardio.serving import client as client_lib, config as config_lib, releases

MODEL = "cardio-tiny"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("serving"))
    staging = str(tmp_path_factory.mktemp("exports"))
    for version, seed in ((1, 0), (2, 1)):
        export_version(staging, root, MODEL, version, seed)
        releases.record_push(root, MODEL, version)
    running = start_cardio([f"--model_config_file={root}/models.config", "--enable_batching",
                            "--rest_api_port=-1"])
    yield root, running
    running.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "a16.png").write_bytes(png(1, size=(300, 260)))
    (folder / "b8.png").write_bytes(png(2, bits=8))
    (folder / "c.jpg").write_bytes(jpeg(3))
    pixels = np.random.default_rng(4).integers(0, 4095, size=(64, 48), dtype=np.uint16)
    dicom.write_dicom(str(folder / "d.dcm"), pixels, photometric="MONOCHROME1")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_prints_a_row_per_image_and_a_summary(served, images):
    root, running = served
    result = CliRunner().invoke(cli.main, ["predict", "--server", running.target, "--model", MODEL,
                                           "--label", "stable", str(images)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert json.loads(lines[-1]) == {"images": 4, "failed": 0}
    rows = lines[:-1]
    assert [os.path.basename(r.split()[0]) for r in rows] == ["a16.png", "b8.png", "c.jpg", "d.dcm"]
    assert all(f"{MODEL}/1" in r and "[0.000 0.000 1.000 1.000]" in r for r in rows)


def test_predict_json_lines_match_the_python_client(served, images):
    root, running = served
    result = CliRunner().invoke(cli.main, ["predict", "--server", running.target, "--model", MODEL,
                                           "--version", "2", "--json", str(images / "d.dcm"),
                                           str(images / "c.jpg")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [os.path.basename(r["file"]) for r in rows] == ["d.dcm", "c.jpg"]
    # DICOM goes through cardio.imaging.dicom's normalisation on the client, then PNG.
    with client_lib.Client(running.target) as client:
        expected = client.predict([client_lib.read_image(str(images / "d.dcm")),
                                   (images / "c.jpg").read_bytes()], MODEL, version=2)
    assert [r["probability"] for r in rows] == [e["probability"] for e in expected]
    assert {r["version"] for r in rows} == {2} and all(len(r["crop_box"]) == 4 for r in rows)


def test_predict_over_rest_matches_grpc(served, images):
    root, running = served
    files = [str(images / "d.dcm"), str(images / "c.jpg")]
    answers = {}
    for transport in (["--server", running.target], ["--rest", running.rest]):
        result = CliRunner().invoke(cli.main, ["predict", *transport, "--model", MODEL,
                                               "--version", "2", "--json", *files])
        assert result.exit_code == 0, result.output
        answers[transport[0]] = [json.loads(line) for line in result.output.strip().splitlines()]
    assert answers["--rest"] == answers["--server"]
    unknown = CliRunner().invoke(cli.main, ["predict", "--rest", running.rest, "--model", "nope",
                                            files[1]])
    assert unknown.exit_code == 1 and "HTTP 404: Servable not found" in unknown.output


def test_predict_names_each_bad_file_and_fails(served, images, tmp_path):
    root, running = served
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "text.png").write_text("hello")
    result = CliRunner().invoke(cli.main, ["predict", "--server", running.target, "--model", MODEL,
                                           str(tmp_path / "broken.png"), str(tmp_path / "text.png"),
                                           str(images / "b8.png")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert "broken.png  ERROR INVALID_ARGUMENT" in lines[0]
    assert "text.png: not a PNG, JPEG or DICOM file" in lines[1]
    assert "b8.png" in lines[2] and "ERROR" not in lines[2]
    assert json.loads(lines[-1]) == {"images": 3, "failed": 2}
    unknown = CliRunner().invoke(cli.main, ["predict", "--server", running.target, "--model", "nope",
                                            str(images / "b8.png")])
    assert unknown.exit_code == 1 and "NOT_FOUND: Servable not found" in unknown.output


def test_client_retries_until_the_server_is_up(served, tmp_path):
    root, _ = served
    port = free_port()
    late = {}

    def start_later():
        time.sleep(1.0)
        late["server"] = start_cardio_on(port, root)

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        with client_lib.Client(f"127.0.0.1:{port}", timeout=30, retries=6) as client:
            assert client.predict([png(0)], MODEL)[0]["version"] == 2
    finally:
        thread.join()
        late["server"].stop()


def start_cardio_on(port, root):
    from cardio.serving import server as server_lib
    server = server_lib.Server(server_lib.parse_flags(
        [f"--port={port}", f"--model_config_file={root}/models.config"]), host="127.0.0.1")
    server.start()
    return server


def _saved_model_stub(directory):
    """A saved_model.pb with a `serve` MetaGraph: what `release promote` checks is loadable."""
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    saved.meta_graphs.add().meta_info_def.tags.append("serve")
    directory.mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(saved.SerializeToString())


def _comparison(path, version):
    path.write_text(json.dumps({"champion": {"model_name": MODEL, "reason": "best AUC", "pushed": {
        "pushed": version is not None, "destination": "d", "version": version}}}))
    return str(path)


def test_release_cli_promotes_the_champion_and_rolls_back(tmp_path):
    root = tmp_path / "serving"
    for version in (1, 2):
        _saved_model_stub(root / MODEL / str(version))
        releases.record_push(str(root), MODEL, version)
    runner = CliRunner()

    def promote(comparison):
        return runner.invoke(cli.main, ["release", "promote", "--serving-root", str(root),
                                        "--comparison", comparison])
    # After two pushes (stable and canary on 1), the comparison evaluated version 2: stable
    # moves to 2 exactly, not to the canary's version.
    promoted = promote(_comparison(tmp_path / "c2.json", "2"))
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.output.splitlines()[-1]) == {"model": MODEL, "label": "stable",
                                                            "from": 1, "to": 2}
    assert releases.history(str(root))[-1]["reason"] == "champion: best AUC"
    for version, needle in (("3", "version 3 is not pushed"), (None, "was not pushed")):
        refused = promote(_comparison(tmp_path / "c.json", version))
        assert refused.exit_code == 1 and needle in refused.output, refused.output
    saved_model = root / MODEL / "1" / "saved_model.pb"
    intact = saved_model.read_bytes()
    saved_model.write_bytes(b"half a copy")
    refused = promote(_comparison(tmp_path / "c1.json", "1"))
    assert refused.exit_code == 1 and "version 1 is not loadable" in refused.output
    saved_model.write_bytes(intact)
    assert releases.read_state(str(root))[MODEL]["labels"]["stable"] == 2
    back = runner.invoke(cli.main, ["release", "rollback", "--serving-root", str(root),
                                    "--model", MODEL])
    assert json.loads(back.output.splitlines()[-1])["to"] == 1
    config = config_lib.read_models_config(str(root / config_lib.MODELS_CONFIG))
    assert config.model_config_list.config[0].version_labels["stable"] == 1
    missing = runner.invoke(cli.main, ["release", "promote", "--serving-root", str(root),
                                       "--model", "other"])
    assert missing.exit_code == 1 and "no model named 'other'" in missing.output


def test_cardio_serve_runs_like_tensorflow_model_server(served):
    root, _ = served
    refused = subprocess.run([sys.executable, "-m", "cardio", "serve", "--grpc_socket_path=/s",
                              f"--model_config_file={root}/models.config"],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert refused.returncode == 2 and "--grpc_socket_path is a tensorflow_model_server flag" in \
        refused.stderr
    process = subprocess.Popen([sys.executable, "-m", "cardio", "serve", "--port=0",
                                f"--model_config_file={root}/models.config", "--enable_batching"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               cwd=REPO)
    try:
        ready = json.loads(process.stdout.readline())   # printed once the models are loaded
        assert ready["available"] == {MODEL: [1, 2]}
        assert ready["labels"] == {MODEL: {"stable": 1, "canary": 1}}
        with client_lib.Client(f"127.0.0.1:{ready['port']}") as client:
            assert client.predict([png(0)], MODEL)[0]["version"] == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def _self_signed(host: str) -> tuple[bytes, bytes]:
    crypto = pytest.importorskip("cryptography", reason="cryptography makes the test certificate")
    del crypto
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_predict_over_tls_checks_the_server_certificate(served, images, tmp_path):
    """A TLS endpoint (as an ingress or a TF Serving with --ssl_config_file presents)."""
    import concurrent.futures

    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from cardio.serving import service

    _, running = served
    cert, key = _self_signed("localhost")
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        service.PredictionService(running.server.manager), server)
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    try:
        (tmp_path / "ca.pem").write_bytes(cert)
        result = CliRunner().invoke(cli.main, [
            "predict", "--server", f"localhost:{port}", "--model", MODEL, "--json",
            "--tls-ca", str(tmp_path / "ca.pem"), str(images / "b8.png")])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output.splitlines()[-1])["version"] == 2
        # Without the CA the certificate is not trusted: no silent fallback to plaintext.
        untrusted = CliRunner().invoke(cli.main, [
            "predict", "--server", f"localhost:{port}", "--model", MODEL, "--tls", "--retries",
            "0", "--timeout", "5", str(images / "b8.png")])
        assert untrusted.exit_code == 1 and "UNAVAILABLE" in untrusted.output
    finally:
        server.stop(0)


def test_reload_config_request_swaps_the_served_models(served):
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    root, running = served
    config = config_lib.read_models_config(os.path.join(root, config_lib.MODELS_CONFIG))
    renamed = type(config)()
    renamed.CopyFrom(config)
    renamed.model_config_list.config[0].name = "renamed"
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(running.target))
    try:
        response = stub.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=renamed), timeout=120)
        assert response.status.error_code == 0, response.status.error_message
        with client_lib.Client(running.target, retries=0) as client:
            assert client.predict([png(0)], "renamed")[0]["version"] == 2
            with pytest.raises(grpc.RpcError) as raised:
                client.predict([png(0)], MODEL)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                       timeout=120)
    with client_lib.Client(running.target) as client:
        assert client.predict([png(0)], MODEL)[0]["version"] == 2
