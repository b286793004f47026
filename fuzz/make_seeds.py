#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from the project's fixtures
(packaging/sparkd.toml, the toml blocks of docs/configuration.md,
models/centerface.toml, fuzz/fixtures/) and from the request, manifest,
chunk and pack shapes the tests use. Deterministic: run it again after a
format change and commit the result.

Needs python3 and its `cryptography` package (Debian: python3-cryptography)
to sign the envelopes with the fuzzing key (seed 0x5a * 32, the same as
fuzz/src/lib.rs)."""

import base64
import hashlib
import json
import pathlib
import re
import shutil
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
KEY = Ed25519PrivateKey.from_private_bytes(b"\x5a" * 32)
SEP = b"\n--\n"


def compact(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def sign(manifest: bytes) -> bytes:
    sig = KEY.sign(manifest).hex()
    return compact({"manifest": base64.b64encode(manifest).decode(), "signatures": [{"key_id": "fuzz", "sig": sig}]})


def chunk(update_id: str, index: int, total: int, data: bytes) -> bytes:
    return compact({"update_id": update_id, "index": index, "total": total,
                    "sha256_of_chunk": hashlib.sha256(data).hexdigest(),
                    "data": base64.b64encode(data).decode()})


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def pack(entries) -> bytes:
    out = b"spark-pack 1\n"
    for name, data in entries:
        out += f"{name} {len(data)}\n".encode() + data
    return out


def write(target: str, seeds: dict):
    d = FUZZ / "corpus" / target
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for name, data in seeds.items():
        (d / name).write_bytes(data)


def main():
    # control_frame: every request kind as the CLI frames it, and broken ones.
    requests = [{"cmd": c} for c in ["status", "queue", "link", "engine", "sync", "doctor", "config-show",
                                      "config-reload", "update-status", "camera-list", "camera-snapshot"]]
    requests += [{"cmd": "mic-level", "from_seq": 42}, {"cmd": "mic-level"},
                 {"cmd": "infer", "name": "a.png", "image_hex": "89504e470d0a1a0a"},
                 {"cmd": "update-apply-manifest", "envelope": "{}"},
                 {"cmd": "update-apply-chunk", "chunk": "{}"}]
    seeds = {f"req-{i:02}": frame(compact({"v": 1, "request": r})) for i, r in enumerate(requests)}
    seeds["bad-version"] = frame(compact({"v": 7, "request": {"cmd": "status"}}))
    seeds["no-version"] = frame(compact({"request": {"cmd": "status"}}))
    seeds["truncated"] = frame(compact({"v": 1, "request": {"cmd": "status"}}))[:-3]
    seeds["huge-length"] = struct.pack(">I", 0xFFFFFFFF) + b"{}"
    seeds["response-ok"] = compact({"v": 1, "response": {"kind": "error", "code": "busy", "message": "m"}})
    write("control_frame", seeds)

    # config, config_runtime: the packaged config, the documented blocks, small ones.
    configs = {"packaging": (ROOT / "packaging/sparkd.toml").read_bytes(),
               "fixture": (FUZZ / "fixtures/dispatch_artifact.toml").read_bytes(),
               "empty": b"",
               "tls": b'[mqtt]\nurl = "mqtts://broker.example:8883"\nca_file = "ca.pem"\n'
                      b'client_cert_file = "c.pem"\nclient_key_file = "k.pem"\n',
               "durations": b'[hailo]\nreprobe_min_secs = 1.5\nreprobe_max_secs = 600.0\n[telemetry]\n'
                            b'interval_secs = 0.5\n[camera]\nfps = 30.0\n[store]\nmax_megabytes = 64\n'
                            b'[store.ttl_secs]\nevents = 3600\n[mqtt]\nkeep_alive_secs = 30\n'
                            b'status_interval_secs = 60\n',
               "load": b'[load]\nevents_per_sec = 100.0\nevent_bytes = 512\n[audio]\nenabled = true\n'
                       b'buffer_secs = 2.0\n[log]\nlevel = "spark_edge=debug"\n'}
    doc = (ROOT / "docs/configuration.md").read_text()
    for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc, re.S)):
        configs[f"doc-{i}"] = block.encode()
    write("config", configs)
    write("config_runtime", configs)

    # update_manifest: manifests of each kind; update_envelope: them signed.
    art = (FUZZ / "fixtures/dispatch_artifact.toml").read_bytes()
    dispatch = (FUZZ / "fixtures/dispatch_manifest.json").read_bytes()
    base = {"version": "2.0.0", "issued_at": 1767225600, "expires_at": 4102444800,
            "artifact": {"file_name": "a.bin", "length": 4, "sha256": hashlib.sha256(b"onnx").hexdigest()}}
    manifests = {
        "config": dispatch,
        "model": compact({"kind": "model", "name": "m", **base, "targets": {"devices": ["fuzz-device"]},
                          "hailort_version": "4.23.0",
                          "canary": {"input": "face.png", "label": "face", "min_score": 0.5}}),
        "binary": compact({"kind": "binary", "name": "sparkd", **base, "targets": {"group": "fuzz-group"},
                           "min_running_version": "0.1.0"}),
        "other-device": compact({"kind": "config", "name": "sparkd", **base, "targets": {"devices": ["x"]}}),
    }
    write("update_manifest", manifests)
    envelopes = {f"signed-{k}": sign(v) for k, v in manifests.items()}
    envelopes["unknown-key"] = sign(dispatch).replace(b'"fuzz"', b'"other"')
    envelopes["bundle"] = b"spark-bundle 1\n" + sign(dispatch) + b"\n" + art
    envelopes["keys-file"] = ("# trusted keys\nfuzz " + KEY.public_key().public_bytes_raw().hex() + "\n").encode()
    write("update_envelope", envelopes)

    # update_chunk: a chunk and state reports as devices send them.
    update_id = hashlib.sha256(dispatch).hexdigest()[:32]
    write("update_chunk", {
        "chunk": chunk(update_id, 0, 1, art),
        "chunk-empty": chunk(update_id, 0, 1, b""),
        "state-received": compact({"device_id": "d", "group": "g", "update_id": update_id, "kind": "config",
                                   "name": "sparkd", "version": "1.0.0", "state": "received",
                                   "chunks": [1, 2], "ts": 1}),
        "state-rejected": compact({"device_id": "d", "group": "g", "update_id": "", "state": "rejected",
                                   "code": "bad_signature", "reason": "r", "ts": 1}),
    })

    # model_manifest / model_pack: the demo manifest and one naming m.onnx.
    centerface = (ROOT / "models/centerface.toml").read_text()
    small = centerface.replace('"centerface.onnx"', '"m.onnx"')
    small = re.sub(r'sha256 = "[0-9a-f]{64}"', f'sha256 = "{hashlib.sha256(b"onnx").hexdigest()}"', small, count=1)
    with_hef = small.replace("# [hef]\n# file = \"centerface.hef\"\n# sha256 = \"...\"\n# hailort_version",
                             f'[hef]\nfile = "m.hef"\nsha256 = "{"0" * 64}"\nhailort_version')
    write("model_manifest", {"centerface": centerface.encode(), "small": small.encode(),
                             "with-hef": with_hef.encode()})
    write("model_pack", {
        "pack": pack([("model.toml", small.encode()), ("m.onnx", b"onnx")]),
        "pack-hef": pack([("model.toml", with_hef.encode()), ("m.onnx", b"onnx"), ("m.hef", b"hef"),
                          ("face.png", b"\x89PNG")]),
        "no-manifest": pack([("m.onnx", b"onnx")]),
    })

    # mqtt_dispatch: selector byte + payload, messages separated by SEP.
    good = chunk(update_id, 0, 1, art)
    write("mqtt_dispatch", {
        "device-chunk": b"c" + good,
        "group-chunk": b"C" + good,
        "manifest-then-chunk": b"m" + sign(dispatch) + SEP + b"c" + good,
        "bad-chunk-then-good": b"c" + chunk(update_id, 0, 2, art[:10]) + SEP + b"C" + good,
        "other-manifest": b"M" + sign(manifests["model"]),
        "state-ignored": b"s" + good,
    })


if __name__ == "__main__":
    main()
