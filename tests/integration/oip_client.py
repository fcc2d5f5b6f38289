"""Talks to a gateway with tritonclient, the Open Inference Protocol client from PyPI.

Run in its own process: tritonclient's generated ``inference`` package would collide
with strata.api.inference in one interpreter (protos/README.md). Prints one JSON
object: per protocol (grpc, http), server and model readiness, the model's metadata,
and the answer to infer on ROWS (a JSON list of [a, b] rows).

Usage: python oip_client.py GRPC_ADDRESS HTTP_ADDRESS MODEL TOKEN ROWS
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc  # type: ignore[import-untyped]
import tritonclient.http as triton_http  # type: ignore[import-untyped]


def ask(client: Any, module: Any, model: str, headers: dict[str, str], rows: Any) -> dict[str, Any]:
    x = np.asarray(rows, dtype=np.float32)
    tensor = module.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], headers=headers)
    metadata = (
        client.get_model_metadata(model, headers=headers, as_json=True)
        if module is triton_grpc
        else client.get_model_metadata(model, headers=headers)
    )
    return {
        "server_live": client.is_server_live(headers=headers),
        "server_ready": client.is_server_ready(headers=headers),
        "model_ready": client.is_model_ready(model, headers=headers),
        "metadata": {
            "name": metadata["name"],
            "inputs": [
                [t["name"], t["datatype"], [int(d) for d in t["shape"]]] for t in metadata["inputs"]
            ],
            "outputs": [
                [t["name"], t["datatype"], [int(d) for d in t["shape"]]]
                for t in metadata["outputs"]
            ],
        },
        "version": result.get_response(as_json=True)["model_version"]
        if module is triton_grpc
        else result.get_response()["model_version"],
        "y": result.as_numpy("y").tolist(),
    }


def main() -> None:
    grpc_address, http_address, model, token, rows = sys.argv[1:]
    headers = {"authorization": f"Bearer {token}"}
    data = json.loads(rows)
    answers = {
        "grpc": ask(
            triton_grpc.InferenceServerClient(grpc_address), triton_grpc, model, headers, data
        ),
        "http": ask(
            triton_http.InferenceServerClient(http_address), triton_http, model, headers, data
        ),
    }
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
