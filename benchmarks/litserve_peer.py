"""The peer for benchmarks/serve.py: a LitServe server answering /v1/extract with attrx's own
preprocessing, backend and decoding, so the two servers differ only in their serving machinery.

    python benchmarks/litserve_peer.py --bundle build/demo-bundle --port 8001

Needs `pip install -e '.[bench]'` (litserve); the attrx package itself never imports it.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import litserve as ls  # noqa: E402

from attrx.service.contract.bundle import load_bundle  # noqa: E402
from attrx.service.inference.predictor import Predictor  # noqa: E402
from attrx.service.inference.runtime import load_backend  # noqa: E402

SITUATIONS = "_situations"


class AttrxAPI(ls.LitAPI):
    def __init__(self, bundle: str, threads: int, **kw):
        super().__init__(**kw)
        self.bundle_dir, self.threads = bundle, threads

    def setup(self, device):
        bundle = load_bundle(self.bundle_dir)
        self.predictor = Predictor(bundle, backend=load_backend(bundle, providers="cpu", threads=self.threads))
        self.key = self.predictor.precision_key(None)

    def decode_request(self, request):
        """The model inputs and, as attrx does, the product's situation per attribute (carried
        through the batch as a string array beside the inputs)."""
        data = request.get("image_base64")
        title, image = request.get("title"), base64.b64decode(data) if data else None
        inputs, situations = self.predictor.decode_request(title, image)
        return {**inputs, SITUATIONS: np.array([situations])}

    def batch(self, inputs):
        return self.predictor.batch(inputs)

    def predict(self, x):
        situations = x.pop(SITUATIONS)
        return self.predictor.predict(x), situations

    def unbatch(self, output):
        outputs, situations = output
        return [(outputs, i, situations[i]) for i in range(len(outputs[0]))]

    def encode_response(self, output):
        outputs, i, situations = output
        return {"min_precision": self.key, "predictions": self.predictor.encode_response(
            outputs, i, key=self.key, situations=list(situations))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="build/demo-bundle")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-timeout-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads (attrx's default on 2 cores: 1)")
    ap.add_argument("--api-servers", type=int, default=os.cpu_count() or 1,
                    help="LitServe's HTTP server processes (default: the cores, as many as attrx's front-ends)")
    a = ap.parse_args()
    api = AttrxAPI(a.bundle, a.threads, max_batch_size=a.max_batch_size, batch_timeout=a.batch_timeout_ms / 1000,
                   api_path="/v1/extract")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, healthcheck_path="/readyz")
    server.run(host="127.0.0.1", port=a.port, log_level="warning", generate_client_file=False,
               num_api_servers=a.api_servers)


if __name__ == "__main__":
    main()
